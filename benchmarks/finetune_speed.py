"""Cost of one fine-tuning iteration per method, on the shipped prior and reward model.

    python -m benchmarks.finetune_speed [--method M ...] [--batch-size 32] [--iterations 5] [--threads T]
                                        [--device auto|cpu|cuda] [--out FILE.json]

Each iteration is what ``molctrl finetune`` does per step: draw a batch (targets, or labelled
molecules for ``cond``, or pay-off picks from a pool), loss forward, backward and an AdamW step; the
draw is timed apart (``batch_seconds``). ``rgdm-data`` resamples the 50,000 Db molecules from 4,096
candidates per target, ``rgdm-data-full`` from every molecule of the target's size; ``rgdm-step-data`` is
step-level RGDM at noised Db molecules (one reconstruction-guidance shift per batch). The objectives are built by
:func:`molctrl.finetune.make_objective` from the same spec as the CLI's defaults (25 sampling steps;
CTRL through up to 8 final transitions; step-level RGDM and DDPO train 4 transitions; all six
properties conditioned, reward ``qm9-noh-e3nn-Db``). One warm-up iteration, then the median over
``--iterations``; the time of ``cond`` is per batch of ``--batch-size`` labelled molecules.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict

import click
import torch

from benchmarks.record import command_line, device_name, emit, machine_info
from common.runtime import resolve_device
from molctrl.data.qm9 import load_split
from molctrl.finetune import GuidanceConfig, make_objective
from molctrl.predictor import PROPERTIES
from molctrl.weights import load_prior

METHODS = ("ctrl", "rgdm", "rgdm-data", "rgdm-data-full", "rgdm-rollouts", "rgdm-step", "rgdm-step-data", "ddpo",
           "cond")
POOL = "benchmarks/runs/finetune-rgdm-qm9-noh/pool.safetensors"  # prior-proposal RGDM reuses the committed pool
CANDIDATES = 4096  # molctrl finetune's default


def time_method(method: str, batch_size: int, iterations: int, reward_model: str, device: torch.device,
                data) -> dict[str, float]:
    """Median seconds per iteration of ``method`` and the samples per second it implies."""
    torch.manual_seed(0)
    base = {"cond": "ctrl", "rgdm-rollouts": "rgdm", "rgdm-data": "rgdm", "rgdm-data-full": "rgdm",
            "rgdm-step-data": "rgdm-step"}.get(method, method)
    proposal = {"rgdm-rollouts": "model", "rgdm-data": "data", "rgdm-data-full": "data",
                "rgdm-step-data": "data"}.get(method, "prior")
    guidance = GuidanceConfig(method=base, properties=PROPERTIES, pool=POOL, proposal=proposal,
                              candidates=None if method == "rgdm-data-full" else CANDIDATES)
    spec = {"method": base if method != "cond" else "cond", "guidance": asdict(guidance), "reward_model": reward_model,
            "maximize": None}
    objective, batches = make_objective(spec, load_prior(None), data, batch_size)
    objective.to(device).train()
    optimizer = torch.optim.AdamW(objective.parameter_groups(), lr=1e-5, amsgrad=True)
    times, draws = [], []
    for step in range(iterations + 1):
        start = time.perf_counter()
        batch = [b.to(device) for b in batches(step)]
        draws.append(time.perf_counter() - start)
        start = time.perf_counter()
        loss = objective(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    seconds, draw = statistics.median(times), statistics.median(draws[1:])
    return {"seconds_per_iteration": round(seconds, 3), "batch_seconds": round(draw, 3),
            "molecules_per_second": round(batch_size / (seconds + draw), 2)}


@click.command()
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS), help="Methods to time (default: all).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--iterations", type=int, default=5, show_default=True)
@click.option("--reward-model", default="qm9-noh-e3nn-Db", show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON record here.")
def main(methods, batch_size, iterations, reward_model, threads, device, out) -> None:
    """Seconds per fine-tuning iteration for each method."""
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    data = load_split("qm9-noh", "Db")
    results = {}
    for method in methods or METHODS:
        results[method] = time_method(method, batch_size, iterations, reward_model, device, data)
        click.echo(f"{method:10s} {results[method]['seconds_per_iteration']:.3f} s/iteration", err=True)
    emit({"benchmark": "finetune_speed", "device": device_name(device), "threads": torch.get_num_threads(),
          "batch_size": batch_size, "iterations": iterations, "reward_model": reward_model, "results": results,
          "machine": machine_info(),
          "command": command_line("benchmarks.finetune_speed")}, out)


if __name__ == "__main__":
    main()
