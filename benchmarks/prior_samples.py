"""Sample quality of a molecule prior: EDM's metrics on N samples per sampler (step count and solver).

    python -m benchmarks.prior_samples [--model PATH] [-n 1000] [--steps 1000 --steps 100]
        [--row 50:dpm2 --row 50:dpm2:bf16 ...] [--seed 0] [--out benchmarks/results/prior_qm9-noh.json]

Without ``--model`` the shipped ``qm9-noh`` prior is scored. Each ``--steps`` value is one row of the
ancestral sampler, each ``--row STEPS:SOLVER[:PRECISION]`` one row of that solver
(:data:`common.diffusion.SOLVERS`) with the denoiser's matrix products in that precision
(:data:`common.runtime.PRECISIONS`, default fp32); every row starts from the same seed. A row records
its sampling seconds and molecules per second (the network dominates: one evaluation per step) and,
against the first row, the speed-up.
"""
from __future__ import annotations

import json
import sys
import time

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from common.diffusion import SOLVERS
from common.runtime import PRECISIONS, seed_everything, set_precision
from common.weights import read_tree
from molctrl.metrics import evaluate_molecules, train_smiles
from molctrl.weights import DEFAULT_PRIOR, load_prior


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=str(DEFAULT_PRIOR),
              show_default=True)
@click.option("-n", "n_samples", type=int, default=1000, show_default=True)
@click.option("--steps", "step_counts", type=int, multiple=True, help="Ancestral rows  [default: 1000 without --row]")
@click.option("--row", "rows_", multiple=True, metavar="STEPS:SOLVER[:PRECISION]",
              help="A row of another solver or precision, e.g. 50:dpm2 or 50:dpm2:bf16.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON record here.")
def main(model_path: str, n_samples: int, step_counts: tuple[int, ...], rows_: tuple[str, ...], seed: int,
         batch_size: int, out: str | None) -> None:
    """Score N samples of a prior per sampler and print one JSON record."""
    samplers = [(steps, "ancestral", "fp32") for steps in step_counts] + [sampler_row(text) for text in rows_]
    payload = read_tree(model_path)
    model = load_prior(model_path).eval()
    rows = score_samplers(model, samplers or [(1000, "ancestral", "fp32")], n_samples, seed, batch_size)
    record = {
        "model": model_path, "setting": model.config.setting, "train_step": payload.get("step"),
        "train_seconds": payload.get("train_seconds"), "n_samples": n_samples, "seed": seed, "rows": rows,
        "threads": torch.get_num_threads(),
        "command": command_line("benchmarks.prior_samples"), "machine": machine_info(),
    }
    emit(record, out, indent=1)


def score_samplers(model, samplers: list[tuple[int, str, str]], n_samples: int, seed: int,
                   batch_size: int = 500) -> list[dict]:
    """EDM's metrics, seconds and molecules per second of ``n_samples`` molecules of ``model`` for each
    ``(steps, solver, precision)``, every one from ``seed``; a row's speed-up is against the first row's
    seconds. ``model`` is left in float32."""
    reference = train_smiles(model.config.setting)
    rows: list[dict] = []
    for steps, solver, precision in samplers:
        generator = seed_everything(seed)
        set_precision(model, precision)
        t0 = time.perf_counter()
        molecules = model.sample_many(n_samples, steps, generator, batch_size, solver=SOLVERS[solver])
        seconds = time.perf_counter() - t0
        set_precision(model, "fp32")
        summary = evaluate_molecules(molecules, reference).summary
        rows.append({"sampling_steps": steps, "solver": solver, "precision": precision, **summary,
                     "sampling_seconds": round(seconds, 1),
                     "molecules_per_s": round(n_samples / seconds, 2),
                     "speedup_over_first_row": round(rows[0]["sampling_seconds"] / seconds, 2) if rows else 1.0})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def sampler_row(text: str) -> tuple[int, str, str]:
    """``"50:dpm2"`` -> ``(50, "dpm2", "fp32")``, ``"50:dpm2:bf16"`` -> ``(50, "dpm2", "bf16")``, with a
    one-line error otherwise."""
    steps, _, rest = text.partition(":")
    solver, _, precision = rest.partition(":")
    precision = precision or "fp32"
    if not steps.isdigit() or int(steps) < 1 or solver not in SOLVERS or precision not in PRECISIONS:
        raise click.BadParameter(f"{text!r}: expected STEPS:SOLVER[:PRECISION] with SOLVER one of "
                                 f"{', '.join(SOLVERS)} and PRECISION one of {', '.join(PRECISIONS)}",
                                 param_hint="--row")
    return int(steps), solver, precision


if __name__ == "__main__":
    main()
