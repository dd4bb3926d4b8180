"""``molctrl finetune``: turn the prior into a property-conditioned generator (CTRL, RGDM, DDPO, EDM-cond)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click
import torch

from common.cli import compute_device, compute_options
from common.rollout import KL_FORMS
from common.runs import run_record, train_config
from common.training import TrainConfig, checkpoint_in
from common.weights import SUFFIX
from molctrl.cli.train import _fit, _training_data
from molctrl.finetune import GuidanceConfig
from molctrl.predictor import PROPERTIES

CONFIG = GuidanceConfig  # the defaults of the options


@click.command()
@click.option("--method", type=click.Choice(CONFIG.methods), default=CONFIG.method, show_default=True,
              help="ctrl: KL-regularised, pathwise; rgdm: pay-off weights (prior pool or rollouts); rgdm-step: "
                   "pay-off steps (along rollouts, or at noised data with --proposal data); ddpo: clipped policy "
                   "gradient; cond: EDM-cond (labels as input, denoising loss).")
@click.option("--property", "properties", multiple=True, type=click.Choice([*PROPERTIES, "all"]),
              help="Properties to condition on (repeat; all: the six; trained on random subsets).")
@click.option("--maximize", type=click.Choice(["qed", "logp", "sa"]), default=None,
              help="Instead of property targets, maximise an RDKit score (sa: minimise the SA score).")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True)
@click.option("--prior", "prior_path", default=None, help="Prior model.safetensors (default: the shipped qm9-noh prior).")
@click.option("--reward-model", default="qm9-noh-egnn-Db", show_default=True,
              help="Reward predictor (shipped name or model.safetensors, trained on Db), or xtb: the calibrated "
                   "GFN2-xTB likelihood of alpha, gap, homo, lumo or mu (no gradient).")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Optimisation steps  [default: 2000; on --resume: the run's own]")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-5, show_default=True,
              help="Adam learning rate.")
@click.option("--sampling-steps", type=int, default=CONFIG.sampling_steps, show_default=True, help="Respaced steps of training rollouts.")
@click.option("--alpha", type=float, default=CONFIG.alpha, show_default=True, help="CTRL's KL weight (1: the conditional).")
@click.option("--kl", type=click.Choice(KL_FORMS), default=CONFIG.kl, show_default=True,
              help="CTRL's KL: of the sampler chain's own steps (optimum at alpha 1: the conditional), or the "
                   "continuous-time KL on the same grid (common.rollout).")
@click.option("--kl-cap", type=float, default=None,
              help="CTRL: leave out of each batch's loss the trajectories whose KL exceeds this many nats.")
@click.option("--init", "init_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Start from this conditioned model.safetensors (e.g. CTRL from an RGDM run) instead of the prior.")
@click.option("--grad-steps", type=int, default=CONFIG.grad_steps, show_default=True,
              help="CTRL: gradients through the last K transitions, K uniform in [1, grad-steps].")
@click.option("--score-early", is_flag=True,
              help="CTRL: add the score-function gradient of the transitions before those K (common/ctrl.py), "
                   "with --samples-per-target rollouts per target.")
@click.option("--temperature", type=float, default=CONFIG.temperature, show_default=True, help="RGDM's τ (1: the conditional).")
@click.option("--proposal", type=click.Choice(CONFIG.proposals), default=CONFIG.proposal, show_default=True,
              help="RGDM: a pool resampled by the pay-off weights, of prior samples (prior) or unlabelled Db "
                   "molecules (data), or the model's rollouts (model). Step-level RGDM: noised Db molecules (data) "
                   "or the model's rollouts.")
@click.option("--pool-size", type=int, default=CONFIG.pool_size, show_default=True, help="RGDM, prior proposals: pool size.")
@click.option("--pool-steps", type=int, default=CONFIG.pool_steps, show_default=True,
              help="RGDM, prior proposals: sampling steps of the pool (sampled once, kept in RUN_DIR/pool.safetensors).")
@click.option("--pool", type=click.Path(dir_okay=False, exists=True), default=None,
              help="RGDM, prior proposals: reuse the molecules of another run's pool.safetensors, scored by this run's reward.")
@click.option("--candidates", type=click.IntRange(1), default=CONFIG.candidates, show_default=True,
              help="RGDM, pool proposals: pool molecules of the target's size weighed per target.")
@click.option("--samples-per-target", type=int, default=CONFIG.samples_per_target, show_default=True,
              help="RGDM, model proposals: rollouts per target; their pay-off weights are normalised together. "
                   "CTRL with --score-early: rollouts per target, each one's baseline the others.")
@click.option("--radius", type=float, default=CONFIG.radius, show_default=True, help="Step-level RGDM's ball radius ρ.")
@click.option("--score-max-step", type=click.IntRange(0), default=None,
              help="Step-level RGDM at data states: train on noise steps t ≤ this only (default: all T).")
@click.option("--train-steps", type=int, default=CONFIG.train_steps, show_default=True,
              help="Step-level RGDM and DDPO: transitions trained per trajectory.")
@click.option("--clip", type=float, default=CONFIG.clip, show_default=True, help="DDPO's ratio clip.")
@click.option("--cond-lr-scale", type=float, default=CONFIG.cond_lr_scale, show_default=True,
              help="Learning rate of the zero-initialised condition embedding, as a multiple of --lr.")
@click.option("--cond-gate", type=click.Choice(["time", "none"]), default=CONFIG.cond_gate, show_default=True,
              help="How the condition enters the network: t·W_c c (time; muted at the data) or W_c c (none).")
@click.option("--freeze-backbone", is_flag=True,
              help="Train the condition embedding alone.")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@compute_options
@click.option("--resume", is_flag=True, help="Continue RUN_DIR with its run.json settings (only --steps may change).")
def finetune(**options) -> None:
    """Fine-tune the prior into a conditioned generator; RUN_DIR/model.safetensors is the EMA model."""
    from molctrl.finetune import make_objective
    from molctrl.weights import load_prior

    dev = compute_device(options["device"], options["threads"])
    run, resume, maximize, steps = Path(options["run_dir"]), options["resume"], options["maximize"], options["steps"]
    properties = PROPERTIES if "all" in options["properties"] else tuple(dict.fromkeys(options["properties"]))
    if not resume and bool(properties) == bool(maximize):
        raise click.UsageError("give either --property (one or more) or --maximize")
    if not resume and maximize and options["method"] == "cond":
        raise click.UsageError("--method cond needs labels: use --property")
    if options["reward_model"] == "xtb":
        from molctrl.physics import PHYSICS_PROPERTIES

        if maximize or not set(properties) <= set(PHYSICS_PROPERTIES):
            raise click.BadParameter(f"GFN2-xTB judges property targets of {', '.join(PHYSICS_PROPERTIES)} only",
                                     param_hint="--reward-model")
    guidance = GuidanceConfig.from_options(options, properties=properties, train_backbone=not options["freeze_backbone"])
    fresh = {"model": {"setting": "qm9-noh", "prior": options["prior_path"], "reward_model": options["reward_model"],
                       "maximize": maximize, "init": options["init_path"], "guidance": asdict(guidance),
                       "method": options["method"]},
             "data": {"split": "Db", "limit": None},
             "train": asdict(TrainConfig(steps=steps or 2000, batch_size=options["batch_size"], lr=options["lr"],
                                         ema_decay=0.99, checkpoint_every=options["checkpoint_every"], log_every=10,
                                         seed=options["seed"]))}
    record = run_record(run, resume, fresh)
    spec, train_cfg = record["model"], train_config(record, steps)
    torch.manual_seed(train_cfg.seed)
    prior = load_prior(spec["prior"])
    data = _training_data(prior.config.setting, record)
    objective, batches = make_objective(spec, prior, data, train_cfg.batch_size, train_cfg.seed, run / f"pool{SUFFIX}",
                                        load_init=not (resume and checkpoint_in(run)))
    _fit(objective, batches, train_cfg, run, record, dev, resume, None)

