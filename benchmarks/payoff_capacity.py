"""Can the conditioned molecule denoiser represent the pay-off shift? A fit to one fixed set of states.

``benchmarks.payoff_fit`` showed that models trained on the pay-off score reproduce little of the shift
ε_q − ε_pre = −σ_t·∇ log p̂_t(y | z_t) near the data (t ≤ 150), where it is largest. This separates the
two reasons that could have: the network (the prior plus a condition embedding) cannot express the
shift, or it can and the training budget was too small to learn it from fresh states.

At one noise step t it fixes ``--molecules`` Db molecules, noises each once, and pairs each state with
``--targets-per-state`` targets y ~ p̂(y | x) (random condition subsets), so that a model blind to c
explains at most the shift's mean over a state's targets (reported as ``c_blind_ceiling``). A fresh
conditioned copy of the prior (condition embedding zero, no time gate) is trained by Adam, full batch,
on ‖ε_θ(z_t, t, y) − ε_q(z_t, y)‖² over this set alone — the loss of ``molctrl finetune --method rgdm-step
--proposal data`` — and the share of the shift it explains, 1 − ‖ε_θ − ε_q‖² / ‖ε_q − ε_pre‖², is
reported on the set itself (can it fit?) and on a held-out set built the same way (does the fit
generalise?) every ``--report-every`` steps.

    python -m benchmarks.payoff_capacity --step 50 [--molecules 64] [--targets-per-state 4] [--iterations 400] [--out FILE]
"""
from __future__ import annotations

import sys
import time as clock
from dataclasses import dataclass

import click
import torch

from benchmarks.payoff_fit import payoff_condition, payoff_shift
from benchmarks.record import emit, machine_info
from common.training import condition_parameter_groups
from molctrl.batches import MoleculeBatches
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.finetune import spec_reward
from molctrl.weights import load_prior


@dataclass
class FixedStates:
    """States ``z (S, N, D)`` at one noise level with their conditions ``cond (S, 12)``, the prior's
    ``eps_pre`` and the pay-off shift ``shift (S, N, D)``; rows ``k·K … k·K + K − 1`` share a state."""

    z: torch.Tensor
    time: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor
    eps_pre: torch.Tensor
    shift: torch.Tensor

    def explained(self, model) -> float:
        """1 − ‖ε_θ − ε_q‖² / ‖ε_q − ε_pre‖² over the set."""
        with torch.no_grad():
            moved = (model.denoiser(self.z, self.time, self.mask, self.cond) - self.eps_pre) * self.mask.unsqueeze(-1)
        return float(1 - (moved - self.shift).square().sum() / self.shift.square().sum())

    def c_blind_ceiling(self, per_state: int) -> float:
        """The share a model that ignores c can explain at best: that of each state's mean shift."""
        shift = self.shift.unflatten(0, (-1, per_state))
        return float(1 - (shift - shift.mean(1, keepdim=True)).square().sum() / shift.square().sum())


def fixed_states(prior, reward, conditions: PropertyConditions, types: torch.Tensor, positions: torch.Tensor,
                 step: int, per_state: int) -> FixedStates:
    """One noised state per molecule of ``types (B, N)``, ``positions (B, N, 3)``, each repeated with
    ``per_state`` targets drawn from the reward model's predictive."""
    diffusion = prior.diffusion
    x, mask = prior.encode(types, positions)
    t = torch.full((len(x),), step)
    z, _ = diffusion.add_noise(x, t, mask)
    z, mask = z.repeat_interleave(per_state, 0), mask.repeat_interleave(per_state, 0)
    time = t.repeat_interleave(per_state).float() / diffusion.n_steps
    with torch.no_grad():
        predicted = reward.predict(x, mask[::per_state]).repeat_interleave(per_state, 0)
    payoff, cond = payoff_condition(prior, reward, conditions, predicted)
    eps_pre, shift = payoff_shift(prior, payoff, z, time, mask)
    return FixedStates(z, time, mask, cond, eps_pre, shift)


def fit(model, fitted: FixedStates, held_out: FixedStates, iterations: int, lr: float, cond_lr_scale: float,
        report_every: int, label: str = "") -> list[dict]:
    """Full-batch Adam on ‖ε_θ − ε_pre − shift‖² over ``fitted``; the shares explained on both sets every
    ``report_every`` iterations (and at the start and end)."""
    groups = condition_parameter_groups(model, model.denoiser.cond_embed.weight, cond_lr_scale)
    optimiser = torch.optim.Adam([{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in groups])
    curve, start = [], clock.perf_counter()

    def report(it: int) -> None:
        curve.append({"iteration": it, "fitted": round(fitted.explained(model), 3),
                      "held_out": round(held_out.explained(model), 3)})
        print(f"{label} it {it}/{iterations} {curve[-1]} {clock.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    for it in range(iterations):
        if it % report_every == 0:
            report(it)
        eps = model.denoiser(fitted.z, fitted.time, fitted.mask, fitted.cond)
        loss = (eps - fitted.eps_pre - fitted.shift).square().mul(fitted.mask.unsqueeze(-1)).sum() / len(eps)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    report(iterations)
    return curve


@click.command()
@click.option("--step", "steps", type=int, multiple=True, required=True,
              help="Noise step t of 1,000 (repeat for several, each with a fresh model).")
@click.option("--molecules", type=int, default=64, show_default=True, help="Molecules in the fitted set and in the held-out set.")
@click.option("--targets-per-state", type=int, default=4, show_default=True)
@click.option("--iterations", type=int, default=400, show_default=True, help="Full-batch Adam steps.")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--cond-lr-scale", type=float, default=10.0, show_default=True)
@click.option("--report-every", type=int, default=50, show_default=True)
@click.option("--reward-model", default="qm9-noh-e3nn-Db", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(steps, molecules, targets_per_state, iterations, lr, cond_lr_scale, report_every, reward_model, seed,
         threads, out) -> None:
    """Print one JSON record: per noise step, the share of the pay-off shift a conditioned copy of the
    prior explains on the set it is fitted to and on a held-out set, as the fit goes on."""
    if threads:
        torch.set_num_threads(threads)
    prior = load_prior().eval()
    split = load_split("qm9-noh", "Db")
    conditions = PropertyConditions.from_split(split)
    reward = spec_reward({"maximize": None, "reward_model": reward_model}, prior)
    batches = MoleculeBatches(split, molecules, seed + 1)
    rows = []
    for step in steps:
        torch.manual_seed(seed)
        fitted = fixed_states(prior, reward, conditions, *batches(0), step, targets_per_state)
        held_out = fixed_states(prior, reward, conditions, *batches(1), step, targets_per_state)
        model = prior.with_condition(conditions.cond_dim, gate="none")
        start = clock.perf_counter()
        curve = fit(model, fitted, held_out, iterations, lr, cond_lr_scale, report_every, label=f"t={step}")
        rows.append({"step": step, "shift_square_per_state": round(float(fitted.shift.square().sum() / len(fitted.z)), 3),
                     "c_blind_ceiling": round(fitted.c_blind_ceiling(targets_per_state), 3), "curve": curve,
                     "seconds": round(clock.perf_counter() - start, 1)})
    emit({"reward_model": reward_model, "molecules": molecules, "targets_per_state": targets_per_state,
          "iterations": iterations, "lr": lr, "cond_lr_scale": cond_lr_scale, "seed": seed, "rows": rows,
          "threads": torch.get_num_threads(),
          "command": "python -m benchmarks.payoff_capacity " + " ".join(sys.argv[1:]), "machine": machine_info()},
         out, indent=1)


if __name__ == "__main__":
    main()
