"""How much of the pay-off shift a conditioned molecule model reproduces, per noise level.

For Db molecules x, targets y ~ p̂(y | x) of the reward model (a random non-empty subset of the six
properties conditioned) and states z_t ~ q(z_t | x) at fixed t, the pay-off distribution's ε is

    ε_q(z_t, y) = ε_pre(z_t) − σ_t·∇ log p̂_t(y | z_t)

with p̂_t the reward's reconstruction likelihood (:func:`common.rgdm.payoff_score_loss`, the target of
``molctrl finetune --method rgdm-step --proposal data``). Per t it reports the shift's mean square per
molecule, the fraction of it a model explains, 1 − ‖ε_θ − ε_q‖² / ‖ε_q − ε_pre‖², and the cosine between
ε_θ − ε_pre and ε_q − ε_pre. Any conditioned model can be scored, however it was trained.

    python -m benchmarks.payoff_fit --model NAME=MODEL ... [--batches 4] [--batch-size 64] [--seed 0] [--out FILE]
"""
from __future__ import annotations

import sys

import click
import torch

from benchmarks.record import emit, machine_info
from common.guidance import GuidedDenoiser, reconstruction_likelihood
from molctrl.batches import MoleculeBatches
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.finetune import predictive_targets, spec_reward
from molctrl.predictor import PROPERTIES
from molctrl.weights import load_prior

NOISE_STEPS = (50, 150, 300, 500, 700, 900)


def payoff_condition(prior, reward, conditions: PropertyConditions,
                     predicted: torch.Tensor) -> tuple[GuidedDenoiser, torch.Tensor]:
    """The pay-off ε (the prior guided by the reconstruction likelihood) and the condition ``(B, 12)`` for
    targets y ~ p̂(y | x) drawn from the reward's predictions ``predicted (B, P)``, a random non-empty
    subset of the properties conditioned."""
    y = predictive_targets(reward, predicted)
    y_mask = conditions.random_mask(len(predicted), PROPERTIES)
    payoff = GuidedDenoiser(prior.denoiser, prior.diffusion, reconstruction_likelihood(reward, prior.diffusion, y, y_mask))
    return payoff, conditions.encode(y, y_mask)


def payoff_shift(prior, payoff: GuidedDenoiser, z: torch.Tensor, time: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's ε and the pay-off shift ε_q − ε_pre at states ``z (B, N, D)``, zero on padding."""
    keep = mask.unsqueeze(-1)
    with torch.no_grad():
        eps_pre = prior.denoiser(z, time, mask)
    return eps_pre, -payoff.shift(z, time, mask, eps_pre) * keep


def fit_by_step(model, prior, reward, conditions: PropertyConditions, batches: MoleculeBatches, n_batches: int,
                seed: int) -> dict[int, dict[str, float]]:
    """Shift mean square, fraction explained and cosine at each of :data:`NOISE_STEPS`."""
    diffusion = prior.diffusion
    torch.manual_seed(seed)
    sums = {t: torch.zeros(3) for t in NOISE_STEPS}
    count = 0
    for b in range(n_batches):
        types, positions = batches(b)
        x, mask = prior.encode(types, positions)
        with torch.no_grad():
            predicted = reward.predict(x, mask)
        payoff, cond = payoff_condition(prior, reward, conditions, predicted)
        for step in NOISE_STEPS:
            t = torch.full((len(x),), step)
            z, _ = diffusion.add_noise(x, t, mask)
            time = t.float() / diffusion.n_steps
            eps_pre, shift = payoff_shift(prior, payoff, z, time, mask)
            with torch.no_grad():
                moved = (model.denoiser(z, time, mask, cond) - eps_pre) * mask.unsqueeze(-1)
            square = shift.square().sum()
            sums[step] += torch.stack([square, (moved - shift).square().sum(),
                                       (moved * shift).sum() / (moved.norm() * shift.norm()).clamp(min=1e-12)])
        count += len(x)
    return {t: {"shift_square_per_molecule": round(float(s[0] / count), 3),
                "explained": round(float(1 - s[1] / s[0]), 3), "cosine": round(float(s[2] / n_batches), 3)}
            for t, s in sums.items()}


@click.command()
@click.option("--model", "models", multiple=True, metavar="NAME=MODEL", required=True,
              help="A conditioned model.pt to score (repeat).")
@click.option("--reward-model", default="qm9-noh-e3nn-Db", show_default=True)
@click.option("--batches", "n_batches", type=int, default=4, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(models, reward_model, n_batches, batch_size, seed, threads, out) -> None:
    """Print one JSON record of each model's fit to the pay-off ε per noise level."""
    if threads:
        torch.set_num_threads(threads)
    prior = load_prior().eval()
    split = load_split("qm9-noh", "Db")
    conditions = PropertyConditions.from_split(split)
    reward = spec_reward({"maximize": None, "reward_model": reward_model}, prior)
    batches = MoleculeBatches(split, batch_size, seed + 1)
    rows = []
    for spec in models:
        name, _, path = spec.partition("=")
        model = load_prior(path).eval()
        rows.append({"row": name, "model": path, "cond_gate": model.config.cond_gate,
                     "by_step": fit_by_step(model, prior, reward, conditions, batches, n_batches, seed)})
    emit({"reward_model": reward_model, "batches": n_batches, "batch_size": batch_size, "seed": seed, "rows": rows,
          "threads": torch.get_num_threads(), "command": "python -m benchmarks.payoff_fit " + " ".join(sys.argv[1:]),
          "machine": machine_info()}, out, indent=1)


if __name__ == "__main__":
    main()
