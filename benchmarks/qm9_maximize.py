"""Score maximisation: an RDKit score of samples from the prior and from models fine-tuned to raise it.

    python -m benchmarks.qm9_maximize --score qed -n 500 --steps 100 --seed 0 \\
        --model rgdm=molctrl/weights/qm9-noh-rgdm-qed.safetensors [--out benchmarks/results/qm9_maximize_qed.json]

Each row samples ``-n`` molecules (atom counts drawn from Db's, the same generator seed for every row) and reports the mean and quartiles of the score over the valid ones (invalid molecules have
no score), with validity and uniqueness of all of them. The first row is the shipped prior.

Steered rows (``--smc K:PROPOSAL:TAU``, e.g. ``16:prior:0.005``, the CLI's default for ``--maximize``):
sequential Monte Carlo towards p_prior(x)·exp(score(x)/τ)·1[valid], one molecule per system of K
particles; best-of-K rows (``--best-of K``): K fresh prior samples per molecule, the valid one with the
highest score. Both record their denoiser evaluations per molecule.
"""
from __future__ import annotations

import sys
import time

import click
import numpy as np
import torch

from benchmarks.qm9_conditional import best_of_sampler, steered_sampler
from benchmarks.record import command_line, emit, machine_info
from common.cli import solver_option
from common.diffusion import SOLVERS
from molctrl.chemistry import ChemistryReward, chemistry_scores
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.generate import atom_counts, generate, target_tensors
from molctrl.metrics import evaluate_molecules, train_smiles
from molctrl.weights import load_prior


@click.command()
@click.option("--score", type=click.Choice(["qed", "logp", "sa"]), default="qed", show_default=True)
@click.option("--model", "models", multiple=True, metavar="NAME=MODEL", help="A fine-tuned model.safetensors to score.")
@click.option("--smc", "smc_specs", multiple=True, metavar="K:PROPOSAL:TAU",
              help="A sequential Monte Carlo row towards exp(score/TAU), e.g. 16:prior:0.05.")
@click.option("--best-of", "best_of", multiple=True, type=click.IntRange(1), metavar="K",
              help="A best-of-K row: K fresh prior samples per molecule, the valid one with the highest score.")
@click.option("-n", "n_samples", type=int, default=500, show_default=True)
@click.option("--steps", type=int, default=100, show_default=True, help="Sampling steps.")
@solver_option("ancestral")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(score, models, smc_specs, best_of, n_samples, steps, solver, seed, threads, out) -> None:
    """Mean score and validity of samples, prior first."""
    if threads:
        torch.set_num_threads(threads)
    conditions = PropertyConditions.from_split(load_split("qm9-noh", "Db"))
    y, y_mask = target_tensors({}, n_samples)  # no property targets: a conditioned model sees c = 0
    rows, solver_name, solver = [], solver, SOLVERS[solver]

    def scored(name: str, sample, **extra) -> None:
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        molecules = sample(g)
        seconds = time.perf_counter() - t0
        values = chemistry_scores(molecules, [score])[score]
        valid = values[np.isfinite(values)]
        summary = evaluate_molecules(molecules, train_smiles("qm9-noh")).summary
        rows.append({"row": name, f"mean_{score}": round(float(valid.mean()), 4),
                     "quartiles": [round(float(q), 4) for q in np.percentile(valid, [25, 50, 75])],
                     "validity": summary["validity"], "uniqueness": summary["uniqueness"],
                     "novelty": summary["novelty"], "sampling_seconds": round(seconds, 1)} | extra)
        print(f"{name}: mean {score} {rows[-1][f'mean_{score}']} validity {summary['validity']:.3f}", file=sys.stderr)

    for name, path in [("prior", None), *(spec.partition("=")[::2] for spec in models)]:
        model = load_prior(path).eval()
        scored(name, lambda g, model=model: generate(model, conditions, y, y_mask, steps, g, solver=solver), model=path,
               network_calls_per_molecule=steps + 1)
    prior = load_prior(None).eval()
    reward = ChemistryReward(score, prior.decode)
    def at_db_sizes(sample):
        """A protocol sampler ``sample(y, y_mask, n_atoms, g)`` as ``g -> molecules``, atom counts from Db."""
        return lambda g: sample(y, y_mask, atom_counts(conditions, y, y_mask, generator=g), g)

    for spec in smc_specs:
        name, sample, calls = steered_sampler(spec, prior, reward, conditions, steps, solver=solver)
        scored(name, at_db_sizes(sample))
        rows[-1] |= calls
    for k in best_of:
        scored(f"best of {k} prior samples", at_db_sizes(best_of_sampler(k, prior, reward, steps, solver)),
               network_calls_per_molecule=k * (steps + 1))
    emit({"score": score, "samples": n_samples, "sampling_steps": steps, "solver": solver_name, "seed": seed, "rows": rows,
          "threads": torch.get_num_threads(), "machine": machine_info(),
          "command": command_line("benchmarks.qm9_maximize")}, out)


if __name__ == "__main__":
    main()
