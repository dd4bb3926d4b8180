"""How much of the pay-off shift a conditioned molecule model reproduces, per noise level.

For Db molecules x, targets y ~ p̂(y | x) of the reward model (a random non-empty subset of the six
properties conditioned) and states z_t ~ q(z_t | x) at fixed t, the pay-off distribution's ε is

    ε_q(z_t, y) = ε_pre(z_t) − σ_t·∇ log p̂_t(y | z_t)

with p̂_t the reward's reconstruction likelihood (:func:`common.rgdm.payoff_score_loss`, the target of
``molctrl finetune --method rgdm-step --proposal data``). Each state is paired with K targets. Per t it
reports the shift's mean square per state, the share of it a model explains,
1 − ‖ε_θ − ε_q‖² / ‖ε_q − ε_pre‖², the cosine between ε_θ − ε_pre and ε_q − ε_pre, and the same share for
the *target-dependent* part of the shift — each state's mean over its K targets removed from both
sides, the part a model must read c to produce. ``c_blind`` is the share of the shift that is not
target-dependent: what a model blind to c explains at best. Any conditioned model can be scored,
however it was trained.

    python -m benchmarks.studies.payoff_fit --model NAME=MODEL ... [--batches 4] [--batch-size 32] [--targets-per-state 4] [--out FILE]
"""
from __future__ import annotations

from dataclasses import dataclass

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from common.guidance import GuidedDenoiser, reconstruction_likelihood
from molctrl.batches import MoleculeBatches
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.finetune import predictive_targets
from molctrl.predictor import PROPERTIES
from molctrl.weights import load_prior, load_reward

NOISE_STEPS = (50, 150, 300, 500, 700, 900)


@dataclass
class PayoffStates:
    """States ``z (S, N, D)`` at one noise level with their conditions ``cond (S, 12)``, the prior's
    ``eps_pre`` and the pay-off shift ε_q − ε_pre ``shift (S, N, D)`` (zero on padding); rows
    ``k·K … k·K + K − 1`` share a state and differ in their targets."""

    z: torch.Tensor
    time: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor
    eps_pre: torch.Tensor
    shift: torch.Tensor
    per_state: int

    def moved(self, model) -> torch.Tensor:
        """The model's departure from the prior, ε_θ − ε_pre ``(S, N, D)``."""
        return (model.denoiser(self.z, self.time, self.mask, self.cond) - self.eps_pre) * self.mask.unsqueeze(-1)

    def _target_dependent(self, v: torch.Tensor) -> torch.Tensor:
        v = v.unflatten(0, (-1, self.per_state))
        return v - v.mean(1, keepdim=True)

    def sums(self, model) -> torch.Tensor:
        """``(6,)``: ‖shift‖², ‖moved − shift‖², their target-dependent parts, moved·shift and ‖moved‖²,
        summed over the set (add them over sets, then :func:`shares`)."""
        with torch.no_grad():
            moved = self.moved(model)
        shift_c, moved_c = self._target_dependent(self.shift), self._target_dependent(moved)
        return torch.stack([self.shift.square().sum(), (moved - self.shift).square().sum(), shift_c.square().sum(),
                            (moved_c - shift_c).square().sum(), (moved * self.shift).sum(), moved.square().sum()])


def shares(sums: torch.Tensor) -> dict[str, float]:
    """The explained shares and the cosine from :meth:`PayoffStates.sums`."""
    square, residual, square_c, residual_c, dot, moved = sums.tolist()
    return {"explained": round(1 - residual / square, 3),
            "explained_target_dependent": round(1 - residual_c / square_c, 3) if square_c else None,
            "c_blind": round(1 - square_c / square, 3), "cosine": round(dot / max((moved * square) ** 0.5, 1e-12), 3)}


def payoff_states(prior, reward, conditions: PropertyConditions, types: torch.Tensor, positions: torch.Tensor,
                  step: int, per_state: int = 1) -> PayoffStates:
    """One noised state at ``step`` per molecule of ``types (B, N)``, ``positions (B, N, 3)``, each repeated
    with ``per_state`` targets drawn from the reward model's predictive at the molecule."""
    diffusion = prior.diffusion
    x, mask = prior.encode(types, positions)
    t = torch.full((len(x),), step)
    z, _ = diffusion.add_noise(x, t, mask)
    with torch.no_grad():
        predicted = reward.predict(x, mask).repeat_interleave(per_state, 0)
    z, mask = z.repeat_interleave(per_state, 0), mask.repeat_interleave(per_state, 0)
    time = t.repeat_interleave(per_state).float() / diffusion.n_steps
    y = predictive_targets(reward, predicted)
    y_mask = conditions.random_mask(len(y), PROPERTIES)
    payoff = GuidedDenoiser(prior.denoiser, diffusion, reconstruction_likelihood(reward, diffusion, y, y_mask))
    with torch.no_grad():
        eps_pre = prior.denoiser(z, time, mask)
    shift = -payoff.shift(z, time, mask, eps_pre) * mask.unsqueeze(-1)
    return PayoffStates(z, time, mask, conditions.encode(y, y_mask), eps_pre, shift, per_state)


def fit_by_step(models: dict, prior, reward, conditions: PropertyConditions, batches: MoleculeBatches, n_batches: int,
                per_state: int, seed: int) -> dict[str, dict[int, dict[str, float]]]:
    """Per model and t of :data:`NOISE_STEPS`: the shift's mean square per state and :func:`shares`. The
    states and their shifts (the costly part) are built once and scored by every model."""
    torch.manual_seed(seed)
    by_step = {name: {} for name in models}
    for step in NOISE_STEPS:
        sums, count = {name: torch.zeros(6) for name in models}, 0
        for b in range(n_batches):
            states = payoff_states(prior, reward, conditions, *batches(b), step, per_state)
            for name, model in models.items():
                sums[name] += states.sums(model)
            count += len(states.z)
        for name, total in sums.items():
            by_step[name][step] = {"shift_square_per_state": round(float(total[0] / count), 3)} | shares(total)
    return by_step


def shipped_parts(reward_model: str, batch_size: int, seed: int):
    """The shipped qm9-noh prior, the reward model, the Db conditions and Db batches seeded ``seed + 1``."""
    prior = load_prior().eval()
    split = load_split("qm9-noh", "Db")
    reward = load_reward(prior, reward_model)
    return prior, reward, PropertyConditions.from_split(split), MoleculeBatches(split, batch_size, seed + 1)


@click.command()
@click.option("--model", "models", multiple=True, metavar="NAME=MODEL", required=True,
              help="A conditioned model.safetensors to score (repeat).")
@click.option("--reward-model", default="qm9-noh-e3nn-Db", show_default=True)
@click.option("--batches", "n_batches", type=int, default=4, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Molecules per batch.")
@click.option("--targets-per-state", "per_state", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(models, reward_model, n_batches, batch_size, per_state, seed, threads, out) -> None:
    """Print one JSON record of each model's fit to the pay-off ε per noise level."""
    if threads:
        torch.set_num_threads(threads)
    prior, reward, conditions, batches = shipped_parts(reward_model, batch_size, seed)
    specs = [spec.partition("=")[::2] for spec in models]
    loaded = {name: load_prior(path).eval() for name, path in specs}
    by_step = fit_by_step(loaded, prior, reward, conditions, batches, n_batches, per_state, seed)
    rows = [{"row": name, "model": path, "cond_gate": loaded[name].config.cond_gate, "by_step": by_step[name]}
            for name, path in specs]
    emit({"reward_model": reward_model, "batches": n_batches, "batch_size": batch_size, "targets_per_state": per_state, "seed": seed, "rows": rows,
          "threads": torch.get_num_threads(), "command": command_line("benchmarks.studies.payoff_fit"),
          "machine": machine_info()}, out, indent=1)


if __name__ == "__main__":
    main()
