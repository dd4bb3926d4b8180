"""CTRL's objective for any conditioned molecule model: reward and KL to the prior on the same rollouts.

    J = E[ r(x; y) ] − α·E[ Σ_t KL_t ],   r = log p̂(y | x) of the reward model, α = 1,

for targets drawn as in training (N from Db, y ~ p(c | N), a random non-empty subset of the six
properties conditioned), on the respaced sampler CTRL trains with. KL is given in both forms of
:mod:`common.rollout` (the chain's own steps, and the continuous-time KL on the same grid), each split
over the steps, so one sees where a model's distance from the prior lies. Models trained without the
KL (EDM-cond, RGDM), and reconstruction guidance of the prior by the reward model itself, are scored on
the same footing. Medians are given beside the means: a few rollouts that leave the data manifold
carry KLs of 10⁴ and more.

    python -m benchmarks.studies.ctrl_objective --model NAME=MODEL ... [--targets 256] [--steps 10] [--out FILE]
"""
from __future__ import annotations

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from common.guidance import GuidedDenoiser, reconstruction_likelihood
from common.rollout import kl_factors, rollout
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.finetune import target_batches
from molctrl.predictor import PROPERTIES
from molctrl.weights import load_prior, load_reward


@torch.no_grad()
def score(model, prior, reward, conditions, n_atoms, y, y_mask, steps: int, seed: int) -> dict:
    """Reward, and both KL forms per step, of ``model``'s rollouts: a conditioned model, the prior itself
    (``None``), or ``"guidance"``, the prior steered by reconstruction guidance with the reward model."""
    diffusion = prior.diffusion
    mask = torch.arange(int(n_atoms.max())).unsqueeze(0) < n_atoms.unsqueeze(1)
    if model == "guidance":
        net, cond = GuidedDenoiser(prior.denoiser, diffusion, reconstruction_likelihood(reward, diffusion, y, y_mask)), None
    else:
        net, cond = (prior.denoiser, None) if model is None else (model.denoiser, conditions.encode(y, y_mask))
    roll = rollout(diffusion, net, prior.denoiser, mask, prior.n_channels, steps, cond, checkpoint=False,
                   generator=torch.Generator().manual_seed(seed))
    pairs = diffusion.transitions(steps, 1, mask.device)
    labels = [f"{int(t)}->{'x' if s is None else int(s)}" for t, s in pairs]
    factors = kl_factors(diffusion, pairs, "continuous").to(roll.step_kl.dtype)
    r = reward(roll.x, mask, y, y_mask)
    out = {"reward": _summary(r)}
    for name, parts in (("kl_chain", roll.step_kl), ("kl_continuous", roll.step_kl * factors)):
        total = parts.sum(0)
        out[name] = _summary(total) | {"objective_median": round(float((r - total).median()), 2),
                                       "per_step_median": dict(zip(labels, (round(float(p.median()), 2) for p in parts)))}
    return out


def _summary(v: torch.Tensor) -> dict:
    return {"mean": round(float(v.mean()), 2), "median": round(float(v.median()), 2)}


@click.command()
@click.option("--model", "models", multiple=True, metavar="NAME=MODEL", required=True,
              help="A conditioned model.safetensors to score (repeat); NAME=prior scores the prior itself, NAME=guidance the "
                   "prior under reconstruction guidance (scale 1) by the reward model.")
@click.option("--reward-model", default="qm9-noh-e3nn-Db", show_default=True)
@click.option("--targets", "n_targets", type=int, default=256, show_default=True)
@click.option("--steps", type=int, default=10, show_default=True, help="Respaced sampling steps of the rollouts.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(models, reward_model, n_targets, steps, seed, threads, out) -> None:
    """Print one JSON record of CTRL's objective (reward, KL) for each model."""
    if threads:
        torch.set_num_threads(threads)
    prior = load_prior().eval()
    conditions = PropertyConditions.from_split(load_split("qm9-noh", "Db"))
    reward = load_reward(prior, reward_model)
    n_atoms, y, y_mask = target_batches(conditions, n_targets, PROPERTIES, seed)(0)
    rows = []
    for spec in models:
        name, _, path = spec.partition("=")
        model = None if path in ("", "prior") else path if path == "guidance" else load_prior(path).eval()
        rows.append({"row": name, "model": path or "prior"}
                    | score(model, prior, reward, conditions, n_atoms, y, y_mask, steps, seed))
    emit({"reward_model": reward_model, "targets": n_targets, "sampling_steps": steps,
          "seed": seed, "rows": rows, "threads": torch.get_num_threads(),
          "command": command_line("benchmarks.studies.ctrl_objective"), "machine": machine_info()},
         out, indent=1)


if __name__ == "__main__":
    main()
