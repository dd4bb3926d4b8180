"""Can the conditioned molecule denoiser represent the pay-off shift? A fit to one fixed set of states.

``benchmarks.studies.payoff_fit`` showed that models trained on the pay-off score reproduce little of the shift
ε_q − ε_pre = −σ_t·∇ log p̂_t(y | z_t) near the data (t ≤ 150), where it is largest. This separates the
two possible reasons: the network (the prior plus a condition embedding) cannot express the
shift, or it can and the training budget was too small to learn it from fresh states.

At one noise step t it fixes ``--molecules`` Db molecules, noises each once, and pairs each state with
``--targets-per-state`` targets y ~ p̂(y | x) (random condition subsets;
:func:`benchmarks.studies.payoff_fit.payoff_states`). A fresh conditioned copy of the prior (condition
embedding zero, no time gate) is trained by Adam, full batch, on ‖ε_θ(z_t, t, y) − ε_q(z_t, y)‖² over
this set alone — the loss of ``molctrl finetune --method rgdm-step --proposal data`` — and every
``--report-every`` steps the share of the shift it explains, 1 − ‖ε_θ − ε_q‖² / ‖ε_q − ε_pre‖², is
reported on the set itself (can it fit?) and on a held-out set built the same way (does the fit
generalise?), in total and for the target-dependent part of the shift (each state's mean over its
targets removed: the part only a model that reads c can produce). ``c_blind`` is the share of the
shift that is not target-dependent.

    python -m benchmarks.studies.payoff_capacity --step 50 [--molecules 64] [--targets-per-state 4] [--iterations 400] [--out FILE]
"""
from __future__ import annotations

import sys
import time as clock

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from benchmarks.studies.payoff_fit import (
    PayoffStates,
    payoff_states,
    shares,
    shipped_parts,
)
from common.training import condition_parameter_groups


def fit(model, fitted: PayoffStates, held_out: PayoffStates, iterations: int, lr: float, cond_lr_scale: float,
        report_every: int, label: str = "") -> list[dict]:
    """Full-batch Adam on ‖ε_θ − ε_pre − shift‖² over ``fitted``; the shares explained on both sets every
    ``report_every`` iterations (and at the start and end)."""
    groups = condition_parameter_groups(model, model.denoiser.cond_embed.weight, cond_lr_scale)
    optimiser = torch.optim.Adam([{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in groups])
    curve, start = [], clock.perf_counter()

    def report(it: int) -> None:
        on_fitted, on_held_out = shares(fitted.sums(model)), shares(held_out.sums(model))
        curve.append({"iteration": it, "fitted": on_fitted["explained"], "held_out": on_held_out["explained"],
                      "fitted_target_dependent": on_fitted["explained_target_dependent"],
                      "held_out_target_dependent": on_held_out["explained_target_dependent"]})
        print(f"{label} it {it}/{iterations} {curve[-1]} {clock.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    for it in range(iterations):
        if it % report_every == 0:
            report(it)
        loss = (fitted.moved(model) - fitted.shift).square().sum() / len(fitted.z)
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
    prior, reward, conditions, batches = shipped_parts(reward_model, molecules, seed)
    rows = []
    for step in steps:
        torch.manual_seed(seed)
        fitted = payoff_states(prior, reward, conditions, *batches(0), step, targets_per_state)
        held_out = payoff_states(prior, reward, conditions, *batches(1), step, targets_per_state)
        model = prior.with_condition(conditions.cond_dim, cond_gate="none")
        start = clock.perf_counter()
        curve = fit(model, fitted, held_out, iterations, lr, cond_lr_scale, report_every, label=f"t={step}")
        rows.append({"step": step, "shift_square_per_state": round(float(fitted.shift.square().sum() / len(fitted.z)), 3),
                     "c_blind": shares(fitted.sums(model))["c_blind"], "curve": curve,
                     "seconds": round(clock.perf_counter() - start, 1)})
    emit({"reward_model": reward_model, "molecules": molecules, "targets_per_state": targets_per_state,
          "iterations": iterations, "lr": lr, "cond_lr_scale": cond_lr_scale, "seed": seed, "rows": rows,
          "threads": torch.get_num_threads(),
          "command": command_line("benchmarks.studies.payoff_capacity"), "machine": machine_info()},
         out, indent=1)


if __name__ == "__main__":
    main()
