"""Score maximisation: an RDKit score of samples from the prior and from models fine-tuned to raise it.

    python -m benchmarks.qm9_maximize --score qed -n 500 --steps 100 --seed 0 \\
        --model rgdm=molctrl/weights/qm9-noh-rgdm-qed.safetensors [--out benchmarks/results/qm9_maximize_qed.json]

Each row samples ``-n`` molecules (atom counts drawn from Db's, the same generator seed for every row) and reports the mean and quartiles of the score over the valid ones (invalid molecules have
no score), with validity and uniqueness of all of them. The first row is the shipped prior.
"""
from __future__ import annotations

import sys
import time

import click
import numpy as np
import torch

from benchmarks.record import emit, machine_info
from molctrl.chemistry import chemistry_scores
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.generate import generate, target_tensors
from molctrl.metrics import evaluate_molecules, train_smiles
from molctrl.weights import load_prior


@click.command()
@click.option("--score", type=click.Choice(["qed", "logp", "sa"]), default="qed", show_default=True)
@click.option("--model", "models", multiple=True, metavar="NAME=MODEL", help="A fine-tuned model.safetensors to score.")
@click.option("-n", "n_samples", type=int, default=500, show_default=True)
@click.option("--steps", type=int, default=100, show_default=True, help="Sampling steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(score, models, n_samples, steps, seed, threads, out) -> None:
    """Mean score and validity of samples, prior first."""
    if threads:
        torch.set_num_threads(threads)
    conditions = PropertyConditions.from_split(load_split("qm9-noh", "Db"))
    rows = []
    for name, path in [("prior", None), *(spec.partition("=")[::2] for spec in models)]:
        model = load_prior(path).eval()
        t0 = time.perf_counter()
        y, y_mask = target_tensors({}, n_samples)  # no property targets: a conditioned model sees c = 0
        molecules = generate(model, conditions, y, y_mask, steps, torch.Generator().manual_seed(seed))
        seconds = time.perf_counter() - t0
        values = chemistry_scores(molecules, [score])[score]
        valid = values[np.isfinite(values)]
        summary = evaluate_molecules(molecules, train_smiles(model.config.setting)).summary
        rows.append({"row": name, "model": path, f"mean_{score}": round(float(valid.mean()), 4),
                     "quartiles": [round(float(q), 4) for q in np.percentile(valid, [25, 50, 75])],
                     "validity": summary["validity"], "uniqueness": summary["uniqueness"],
                     "sampling_seconds": round(seconds, 1)})
        print(f"{name}: mean {score} {rows[-1][f'mean_{score}']} validity {summary['validity']:.3f}", file=sys.stderr)
    emit({"score": score, "samples": n_samples, "sampling_steps": steps, "seed": seed, "rows": rows,
          "threads": torch.get_num_threads(), "machine": machine_info(),
          "command": "python -m benchmarks.qm9_maximize " + " ".join(sys.argv[1:])}, out)


if __name__ == "__main__":
    main()
