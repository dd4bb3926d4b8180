"""How noisy CTRL's gradient is for shapes: the signal-to-noise ratio of one training batch's gradient, for
each estimator, at the start of a control run.

    python -m benchmarks.ctrl_gradient_noise --run benchmarks/runs/shapes-control-ctrl-score/run.json \\
        --batches 16 --seed 0 --threads 1 --out benchmarks/results/ctrl_gradient_noise_shapes.json

Protocol. The objective is the run's own (``shapectrl train control``'s run.json: prior, reward, targets,
rollouts, batch size, trained parameters), at the run's start (the condition map W_c is zero, so every
rollout is the prior's). Two estimators of ∇J are compared on the same ``--batches`` batches (the same
targets and the same noise for both):

* ``pathwise``: back-propagation through the last k transitions only (``score_early`` off);
* ``score_early``: the same, plus the score-function term of the earlier transitions with the
  leave-one-out baseline (``score_early`` on), :func:`common.ctrl.ctrl_loss`.

For each, with g_b the gradient of batch b with respect to the trained parameters and ḡ their mean over
R batches: the noise of one batch σ² = Σ_b ‖g_b − ḡ‖² / (R − 1); the signal ‖∇J‖² estimated without bias
as ‖ḡ‖² − σ²/R; the signal-to-noise ratio of one batch ‖∇J‖²/σ² (below 1 a step's direction is mostly
noise); and the batch size at which it would reach 1, B·σ²/‖∇J‖² (the noise of a mean falls as 1/B).
Also the cosine between the two estimators' ḡ: the truncated pathwise gradient misses the early steps,
so it need not point where the unbiased one does.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from common.training import TrainConfig


def batch_gradients(objective: torch.nn.Module, batches, n: int, seed: int) -> tuple[torch.Tensor, float]:
    """``(n, P)``: the flattened gradient of the trained parameters on batches 0 … n−1, each drawn with
    the noise of ``seed`` and its index; and the mean seconds per batch."""
    params = [p for group in objective.parameter_groups() for p in group["params"] if p.requires_grad]
    rows, t0 = [], time.perf_counter()
    for b in range(n):
        torch.manual_seed(seed * 1000 + b)
        grads = torch.autograd.grad(objective(*batches(b)), params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]))
        print(f"batch {b + 1}/{n}: |g| {rows[-1].norm():.3g}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return torch.stack(rows), (time.perf_counter() - t0) / n


def noise_summary(g: torch.Tensor, batch_size: int) -> dict:
    """Signal, noise and signal-to-noise of one batch from per-batch gradients ``g (R, P)`` (module docstring)."""
    r = len(g)
    mean = g.mean(0)
    noise = float((g - mean).square().sum(1).sum() / (r - 1))
    signal = max(float(mean.square().sum()) - noise / r, 0.0)
    ratio = signal / noise if noise > 0 else math.inf
    return {"batches": r, "mean_gradient_norm": round(float(mean.norm()), 8), "noise_per_batch": round(noise, 10),
            "signal_squared": round(signal, 10), "snr_per_batch": round(ratio, 5),
            "batch_size_for_snr_1": round(batch_size / ratio, 1) if ratio > 0 else None}


@click.command()
@click.option("--run", "run_json", type=click.Path(exists=True, dir_okay=False), required=True,
              help="run.json of a 'shapectrl train control --method ctrl' run: the objective to measure.")
@click.option("--batches", type=click.IntRange(2), default=16, show_default=True, help="Batches R per estimator.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(run_json: str, batches: int, seed: int, threads: int | None, out: str | None) -> None:
    """Signal-to-noise of CTRL's batch gradient, pathwise against pathwise + score function."""
    from shapectrl.cli.train import control_objective

    if threads:
        torch.set_num_threads(threads)
    record = json.loads(Path(run_json).read_text())
    if record["control"]["method"] != "ctrl":
        raise click.BadParameter(f"{run_json}: a CTRL run is needed, this one is {record['control']['method']!r}",
                                 param_hint="--run")
    train_cfg = TrainConfig(**record["train"])
    # one objective and batch source, the score-early run's (targets repeated for its baseline), for both
    # estimators: only the loss's score_early switch differs, so both see the same targets and noise
    run = record | {"control": record["control"] | {"score_early": True}}
    objective, source = control_objective(run, replace(train_cfg, seed=seed))
    rows, means = {}, {}
    for name, score_early in (("pathwise", False), ("score_early", True)):
        objective.config = replace(objective.config, score_early=score_early)
        g, seconds = batch_gradients(objective, source, batches, seed)
        rows[name] = noise_summary(g, train_cfg.batch_size) | {"seconds_per_batch": round(seconds, 2),
                                                               "parameters": g.shape[1]}
        means[name] = g.mean(0)
        print(f"{name}: {rows[name]}", file=sys.stderr)
    cosine = torch.nn.functional.cosine_similarity(means["pathwise"], means["score_early"], dim=0)
    emit({"run": run_json, "control": record["control"], "batch_size": train_cfg.batch_size, "seed": seed,
          "estimators": rows, "cosine_of_mean_gradients": round(float(cosine), 4), "threads": torch.get_num_threads(),
          "machine": machine_info(), "command": command_line("benchmarks.ctrl_gradient_noise")},
         out, indent=1)


if __name__ == "__main__":
    main()
