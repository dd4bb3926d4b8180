"""The README's main job as a user runs it: ``molctrl generate --target NAME=VALUE`` at its defaults,
for a low and a high target, and where the molecules land; with ``--shapes``, ``shapectrl generate
--class CLASS`` at its defaults instead.

    python -m benchmarks.main_job [--target alpha=60 --target alpha=90] [-n 32] [--seed 0] [--out FILE.json]
    python -m benchmarks.main_job --shapes [--class chair ...] [-n 16] [--out FILE.json]

Each target is one run of the command (its shipped defaults: the method, particles, steps and
evaluator it chooses), with ``-n`` molecules or clouds; the record holds each run's summary — for
molecules the evaluator's mean prediction and MAE, validity, uniqueness, novelty; for shapes the class
accuracy, points per cloud, steps and precision; the sampling seconds — and the command line.
"""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

import click
import torch
from click.testing import CliRunner

from benchmarks.record import command_line, emit, machine_info
from molctrl.cli import main as molctrl
from shapectrl.cli import main as shapectrl


@click.command()
@click.option("--target", "targets", multiple=True, default=("alpha=60", "alpha=90"), show_default=True,
              help="A molecule target (repeatable).")
@click.option("--shapes", is_flag=True, help="Run shapectrl generate for each --class instead.")
@click.option("--class", "classes", multiple=True, default=("chair", "airplane", "car"), show_default=True,
              help="With --shapes: a target class (repeatable).")
@click.option("-n", "n_samples", type=click.IntRange(1), default=None,
              help="Molecules or clouds per target  [default: 32 molecules, 16 clouds]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--extra", default="", help="Further options of the generate command, e.g. '--particles 0'.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(targets, shapes, classes, n_samples, seed, extra, threads, out) -> None:
    """Run the main job for each target and print one JSON record."""
    if threads:
        torch.set_num_threads(threads)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / ("clouds" if shapes else "m.sdf")
        jobs = ([(shapectrl, "shapectrl", ["--class", c], c, n_samples or 16) for c in classes] if shapes else
                [(molctrl, "molctrl", ["--target", t], t, n_samples or 32) for t in targets])
        for command, name, target_args, target, n in jobs:
            args = ["generate", *target_args, "-n", str(n), "--seed", str(seed), "--out", str(output), "--json",
                    *(["--overwrite"] if shapes else []), *extra.split()]
            result = CliRunner().invoke(command, args)
            if result.exit_code != 0:
                raise click.ClickException(f"{name} {' '.join(args)} failed: {result.output.strip()}")
            summary = json.loads(result.output.strip().splitlines()[-1])
            shown = [a.replace(str(output), output.name) for a in args]
            runs.append({"command": shlex.join([name, *shown]),
                         "target": target} | {k: v for k, v in summary.items() if k not in ("out", "png")})
            print(f"{target}: {json.dumps(runs[-1])}", file=sys.stderr)
    emit({"benchmark": "main_job", "command": command_line("benchmarks.main_job"),
          "runs": runs, "threads": torch.get_num_threads(), "machine": machine_info()}, out)


if __name__ == "__main__":
    main()
