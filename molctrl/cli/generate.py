"""``molctrl generate``: molecules with given properties (or a maximised RDKit score), scored honestly."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
from click.core import ParameterSource
from tqdm import tqdm

from molctrl.data.qm9 import PROPERTY_UNITS

DEFAULT_WINDOW = (0, 150)  # reconstruction guidance: benchmarks/results/qm9_conditional_reconstruction_window_*
SYMBOLS = {"alpha": "alpha", "gap": "gap", "homo": "HOMO", "lumo": "LUMO", "mu": "mu", "Cv": "Cv"}  # PNG legends


@click.command()
@click.option("--target", "targets", multiple=True, metavar="NAME=VALUE",
              help="A property target, e.g. alpha=80 (Bohr^3), gap=6500 (meV), mu=3 (D); repeat to combine.")
@click.option("--maximize", type=click.Choice(["qed", "logp", "sa"]), default=None,
              help="Maximise an RDKit score instead (sa: the easiest to synthesise).")
@click.option("-n", "n_molecules", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .sdf (targets and predictions "
              "as SDF properties); a PNG grid is written beside it.")
@click.option("--particles", type=click.IntRange(min=0), default=16, show_default=True,
              help="Sequential Monte Carlo: K particles per molecule steered towards p_prior(x)*exp(reward/T), each "
                   "molecule from its own K (docs/steered.md: the lowest MAE); 0: sample --method once.")
@click.option("--proposal", type=click.Choice(["prior", "guidance", "rgdm", "ctrl"]), default="prior", show_default=True,
              help="With --particles: the kernel particles move by (the prior, the guided prior, or a conditioned model).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --particles: T of exp(reward/T)  [default: 0.25 for --target, i.e. p_prior(x)*p(y|x)^4, "
                   "sharper than the conditional (T = 1): the lowest MAE of T = 1, 0.5, 0.25 in "
                   "docs/steered.md; 0.005 for --maximize: mean QED above best-of-16's with 99 %% unique molecules; 0.002 "
                   "scores higher still but repeats molecules]")
@click.option("--method", type=click.Choice(["rgdm", "ctrl", "guidance"]), default="rgdm", show_default=True,
              help="With --particles 0: rgdm / ctrl, a shipped (or --model) conditioned model; guidance, the prior "
                   "steered by the reward predictor's gradient (reconstruction guidance).")
@click.option("--model", "model_path", default=None, help="A conditioned model.safetensors from 'molctrl finetune' "
              "(the rgdm / ctrl proposal, or --method rgdm / ctrl; the prior itself for --method guidance).")
@click.option("--prior", "prior_path", default=None, help="With --particles: the prior to steer (default: the shipped one).")
@click.option("--reward-model", default="qm9-noh-e3nn-Db", show_default=True,
              help="Predictor for --method guidance (reconstruction guidance through x̂₀), or a noise-aware "
                   "predictor ('molctrl train predictor --noise-aware') for classifier guidance.")
@click.option("--reward", "judge", type=click.Choice(["model", "xtb", "both"]), default=None,
              help="With --particles and --target: what the final weights judge. model: the --reward-model "
                   "predictor; xtb: GFN2-xTB recomputed for every finished valid particle and mapped onto the DFT "
                   "scale (gap, homo, lumo, mu, alpha); both: the predictor's and xTB's likelihoods together (xTB on "
                   "gap, homo, lumo, mu). The predictor always steers the path (docs/physics.md). "
                   "[default: both where tblite is installed (lower MAE by the evaluator and by xTB in "
                   "docs/physics.md, at ~1.25x the time); else model]")
@click.option("--verify", is_flag=True, help="Recompute the targeted properties by GFN2-xTB (tblite) on the DFT scale: "
              "SDF fields xtb_*, and the physics MAE printed beside the evaluator's.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Guidance scale of --method guidance.")
@click.option("--guidance-window", "window", default=None, metavar="LO:HI",
              help="--method guidance: guide only the diffusion steps LO < t ≤ HI of the prior's 1,000 "
                   f"[default: {DEFAULT_WINDOW[0]}:{DEFAULT_WINDOW[1]} for reconstruction guidance, whose effect lies in the last 15 % of "
                   "the chain in docs/conditioned.md, at a third of the time of 0:1000; the whole chain for "
                   "classifier guidance].")
@click.option("--guidance-scale", type=click.FloatRange(0), default=1.0, show_default=True,
              help="rgdm / ctrl: classifier-free guidance w (1: the model itself; w > 1 sharpens the condition "
                   "at two network calls per step).")
@click.option("--evaluator", default="qm9-noh-egnn-Da", show_default=True,
              help="Predictor that scores the molecules (keep it different from the reward's architecture).")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Sampling steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None, help="Grid image (default: OUT.png).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def generate(targets, maximize, n_molecules, out, particles, proposal, temperature, method, model_path, prior_path,
             reward_model, judge, verify, scale, window, guidance_scale, evaluator, steps, seed, png_path, as_json) -> None:
    """Generate molecules for property targets (or a maximised score) and report validity, uniqueness,
    novelty, stability and the evaluator's MAE to the targets."""
    from common.runtime import seed_everything
    from molctrl.conditions import PropertyConditions
    from molctrl.data.qm9 import load_split
    from molctrl.depict import grid_png
    from molctrl.generate import (
        atom_counts,
        check_targets,
        parse_targets,
        parse_window,
        target_tensors,
    )
    from molctrl.generate import generate as run
    from molctrl.io import write_molecules
    from molctrl.metrics import evaluate_molecules, train_smiles
    from molctrl.physics import tblite_missing
    from molctrl.steer import Steering, steer
    from molctrl.weights import load_predictor

    if bool(targets) == bool(maximize):
        raise click.UsageError("give either --target NAME=VALUE (one or more) or --maximize")
    if Path(out).suffix.lower() != ".sdf":
        raise click.BadParameter(f"{out}: expected a .sdf file name", param_hint="--out")
    try:
        wanted = parse_targets(targets)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--target") from None
    ctx = click.get_current_context()
    if particles and ctx.get_parameter_source("method") is not ParameterSource.DEFAULT:
        raise click.UsageError("--method samples each molecule once: pass --particles 0 with it "
                               "(or --proposal to steer with that kernel)")
    guided = (proposal if particles else method) == "guidance"
    if guidance_scale != 1.0 and (particles or method == "guidance" or maximize):
        raise click.BadParameter("classifier-free guidance needs property targets and a conditioned model "
                                 "(--particles 0 --method rgdm or ctrl)", param_hint="--guidance-scale")
    if window is not None and not guided:
        raise click.BadParameter("only --method guidance (or --proposal guidance) has a guidance window",
                                 param_hint="--guidance-window")
    try:
        steps_window = None if window is None else parse_window(window)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--guidance-window") from None
    if judge not in (None, "model") and not (particles and wanted):
        raise click.UsageError(f"--reward {judge} judges the particles of property targets: use it with --target "
                               "and --particles")
    missing = tblite_missing()
    if (judge not in (None, "model") or verify) and missing:
        raise click.UsageError(f"{'--verify' if verify else '--reward ' + judge}: {missing}")
    if judge is None:
        judge = "both" if particles and wanted and not missing else "model"
    if particles:
        model, conditioned, reward = _steering_models(proposal, prior_path, model_path, maximize, reward_model)
        final_reward = _final_judge(judge, reward, model, wanted)
        guidance = None
    else:
        model, guidance = _model(method, model_path, maximize, reward_model, scale, steps_window)
        final_reward = None
    scorer = load_predictor(evaluator).eval() if wanted else None
    conditions = PropertyConditions.from_split(load_split(model.config.setting, "Db"))
    try:
        check_targets(wanted, conditions)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--target") from None
    y, y_mask = target_tensors(wanted, n_molecules)
    generator = seed_everything(seed)
    t0 = time.perf_counter()
    if particles:
        steering = Steering(particles, proposal, temperature or (0.005 if maximize else 0.25), guidance_scale=scale,
                            guidance_window=steps_window or DEFAULT_WINDOW)
        with tqdm(total=n_molecules, desc=f"steering {particles} particles", unit="mol", disable=None) as bar:
            molecules, report = steer(model.eval(), reward, y, y_mask, atom_counts(conditions, y, y_mask, generator=generator),
                                      steering, conditions, steps, generator, conditioned, on_batch=bar.update,
                                      final_reward=final_reward)
        for m, r, w in zip(molecules, report.reward.tolist(), report.log_weight.tolist()):
            m.properties |= {"reward": round(r, 4), "log_weight": round(w, 4)}
    else:
        molecules = run(model.eval(), conditions, y, y_mask, steps, generator, guidance, guidance_scale=guidance_scale)
    seconds = time.perf_counter() - t0

    summary = evaluate_molecules(molecules, train_smiles(model.config.setting)).summary
    legends = [[] for _ in molecules]
    if wanted:
        predictions = _predict(scorer, molecules, list(wanted))
        for name, column in zip(wanted, predictions.T):
            summary[f"mae_{name}"] = float(np.nanmean(np.abs(column - wanted[name])))
            summary[f"mean_predicted_{name}"] = float(np.nanmean(column))
            for k, (m, value) in enumerate(zip(molecules, column)):
                m.properties[f"target_{name}"] = wanted[name]
                m.properties[f"predicted_{name}"] = round(float(value), 4)
                legends[k].append(f"{SYMBOLS[name]} {wanted[name]:g} -> {value:.3g}")
    else:
        from molctrl.chemistry import chemistry_scores

        scores = chemistry_scores(molecules, [maximize])[maximize]
        summary[f"mean_{maximize}"] = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
        for k, (m, value) in enumerate(zip(molecules, scores)):
            m.properties[maximize] = "invalid" if np.isnan(value) else round(float(value), 4)
            legends[k].append(f"{maximize} {value:.3f}" if np.isfinite(value) else "invalid")
    if verify:
        from molctrl.cli.evaluate import physics_text
        from molctrl.physics import PHYSICS_PROPERTIES
        from molctrl.xtb_reward import physics_check

        judged = [p for p in wanted if p in PHYSICS_PROPERTIES] or list(PHYSICS_PROPERTIES)
        summary |= physics_check(molecules, {p: np.float64(wanted[p]) for p in judged if p in wanted}, judged)[1]
    how = f"smc {particles} particles, {proposal} proposal" if particles else f"method {method}"
    if final_reward is not None:
        how += f", final weights by {'GFN2-xTB' if judge == 'xtb' else 'the predictor and GFN2-xTB'}"
    for k, m in enumerate(molecules):
        m.title = f"molctrl generate {k} seed {seed} {how}"
    png = png_path or str(Path(out).with_suffix(".png"))
    write_molecules(out, molecules)
    grid_png(molecules, ["; ".join(parts) for parts in legends], png)
    if particles:
        summary |= {"particles": particles, "proposal": proposal, "temperature": steering.temperature,
                    "final_weights": "model" if final_reward is None else judge,
                    "mean_ess": round(float(report.ess.mean()), 2), "network_calls_per_molecule": report.network_calls,
                    "systems_without_a_valid_particle": report.no_valid}
    summary |= {"method": "smc" if particles else method, "guidance_scale": guidance_scale,
                "guidance_window": list(guidance.window or (0, model.diffusion.n_steps)) if guidance else None,
                "sampling_steps": steps,
                "seconds": round(seconds, 1), "out": out, "png": png}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"wrote {len(molecules)} molecules to {out} and {png} in {seconds:.1f} s ({how}, {steps} steps)")
    if particles:
        click.echo(f"  mean ESS        {summary['mean_ess']:.1f} of {particles}; "
                   f"{report.network_calls} network evaluations per molecule")
    for key in ("validity", "uniqueness", "novelty", "mol_stability"):
        click.echo(f"  {key:15s} {summary[key]:.3f}")
    for name in wanted:
        physics = summary.get(f"physics_mae_{name}")
        click.echo(f"  MAE {name:10s} {summary[f'mae_{name}']:.4g} {PROPERTY_UNITS[name]} (evaluator {evaluator})"
                   + ("" if physics is None else f"; {physics:.4g} by GFN2-xTB on the DFT scale "
                      f"({summary['physics_judged']} of {len(molecules)} judged)"))
    if verify:
        click.echo(physics_text(summary))
    if maximize:
        click.echo(f"  mean {maximize:9s} {summary[f'mean_{maximize}']:.3f}")


def _final_judge(judge: str, reward, prior, wanted: dict[str, float]):
    """The final weights' reward of ``--reward`` (None: the steering reward itself)."""
    from molctrl.xtb_reward import final_judge

    try:
        return final_judge(judge, reward, prior.decode, list(wanted))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--reward") from None


def _steering_models(proposal: str, prior_path: str | None, model_path: str | None, maximize: str | None,
                     reward_model: str):
    """The prior, the conditioned model of an rgdm / ctrl proposal (shipped, or ``--model``), and the
    reward: the reward model's likelihood of the targets, or the RDKit score to maximise."""
    from common.weights import SUFFIX
    from molctrl.chemistry import ChemistryReward
    from molctrl.predictor import likelihood_reward
    from molctrl.weights import WEIGHTS_DIR, load_predictor, load_prior

    prior = load_prior(prior_path)
    conditioned = None
    if proposal in ("rgdm", "ctrl"):
        conditioned = load_prior(model_path or WEIGHTS_DIR / f"qm9-noh-{proposal}{'-' + maximize if maximize else ''}{SUFFIX}")
    elif model_path:
        raise click.UsageError(f"--model is the conditioned model of an rgdm or ctrl proposal, not of {proposal!r}")
    if maximize:
        if proposal == "guidance":
            raise click.UsageError("the guidance proposal needs a differentiable reward: use it with --target")
        return prior, conditioned, ChemistryReward(maximize, prior.decode)
    predictor = load_predictor(reward_model).eval()
    return prior, conditioned, likelihood_reward(predictor, predictor.properties, prior.config.type_scale)


def _model(method, model_path, maximize, reward_model, scale, window: tuple[int, int] | None):
    """The model to sample, and the guidance if any (on the diffusion steps inside ``window``, or the
    default's)."""
    from common.weights import SUFFIX, WeightsError
    from molctrl.weights import WEIGHTS_DIR, load_predictor, load_prior

    if method == "guidance":
        if maximize:
            raise click.UsageError("--method guidance needs a differentiable reward: use it with --target")
        from molctrl.generate import Guidance
        from molctrl.noisy_predictor import NoisyPropertyPredictor
        from molctrl.predictor import likelihood_reward

        prior = load_prior(model_path)
        predictor = load_predictor(reward_model).eval()
        if isinstance(predictor, NoisyPropertyPredictor):
            return prior, Guidance(scale, noisy=predictor, window=window)
        return prior, Guidance(scale, reward=likelihood_reward(predictor, predictor.properties, prior.config.type_scale),
                               window=window or DEFAULT_WINDOW)
    path = Path(model_path) if model_path else WEIGHTS_DIR / f"qm9-noh-{method}{'-' + maximize if maximize else ''}{SUFFIX}"
    if not path.exists():
        raise click.UsageError(f"{path}: no such model; train one with 'molctrl finetune' and pass --model, "
                               "or use --method guidance")
    model = load_prior(path)
    if not model.config.cond_dim:
        raise WeightsError(f"{path}: not a conditioned model (train one with 'molctrl finetune')")
    return model, None


def _predict(predictor, molecules, names: list[str]) -> np.ndarray:
    """Evaluator predictions ``(M, len(names))``, NaN for molecules it cannot read."""
    columns = [predictor.properties.index(p) for p in names]
    out = np.full((len(molecules), len(names)), np.nan)
    ok = [k for k, m in enumerate(molecules) if m.n_atoms]
    if ok:
        with torch.no_grad():
            out[ok] = predictor.predict_molecules([molecules[k] for k in ok])[:, columns]
    return out
