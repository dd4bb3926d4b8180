"""The README's main job as a user runs it: ``molctrl generate --target NAME=VALUE`` at its defaults,
for a low and a high target, and where the molecules land.

    python -m benchmarks.main_job [--target alpha=60 --target alpha=90] [-n 32] [--seed 0] [--out FILE.json]

Each target is one run of the command (its shipped defaults: the method, particles, steps and
evaluator it chooses), with ``-n`` molecules; the record holds each run's summary — the evaluator's
mean prediction and MAE, validity, uniqueness, novelty, the sampling seconds — and the command line.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import torch
from click.testing import CliRunner

from benchmarks.record import emit, machine_info
from molctrl.cli import main as molctrl


@click.command()
@click.option("--target", "targets", multiple=True, default=("alpha=60", "alpha=90"), show_default=True)
@click.option("-n", "n_molecules", type=click.IntRange(1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--extra", default="", help="Further options of molctrl generate, e.g. '--particles 0'.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(targets, n_molecules, seed, extra, threads, out) -> None:
    """Run the main job for each target and print one JSON record."""
    if threads:
        torch.set_num_threads(threads)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for target in targets:
            args = ["generate", "--target", target, "-n", str(n_molecules), "--seed", str(seed),
                    "--out", str(Path(folder) / "m.sdf"), "--json", *extra.split()]
            result = CliRunner().invoke(molctrl, args)
            if result.exit_code != 0:
                raise click.ClickException(f"molctrl {' '.join(args)} failed: {result.output.strip()}")
            summary = json.loads(result.output.strip().splitlines()[-1])
            shown = [a.replace(str(Path(folder) / "m.sdf"), "molecules.sdf") for a in args]
            runs.append({"command": "molctrl " + " ".join(shown),
                         "target": target} | {k: v for k, v in summary.items() if k not in ("out", "png")})
            print(f"{target}: {json.dumps(runs[-1])}", file=sys.stderr)
    emit({"benchmark": "main_job", "command": "python -m benchmarks.main_job " + " ".join(sys.argv[1:]),
          "runs": runs, "threads": torch.get_num_threads(), "machine": machine_info()}, out)


if __name__ == "__main__":
    main()
