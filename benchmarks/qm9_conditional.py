"""The conditional QM9 benchmark (EDM/EEGSDE protocol) at CPU scale.

    python -m benchmarks.qm9_conditional --setting qm9-noh -n 500 --steps 100 --seed 0 \\
        --method ctrl=molctrl/weights/qm9-noh-ctrl.pt --method rgdm=molctrl/weights/qm9-noh-rgdm.pt \\
        --method cond=runs/cond/model.pt --guidance qm9-noh-egnn-Db [--out benchmarks/results/...json]

For each property separately: N from the Db atom-count histogram, the target c from p(c | N) (the
label of a random Db molecule with N atoms), one molecule per (N, c) from the method conditioned on
that property alone; the Da evaluator of the *other* architecture than the reward (``--evaluator``)
predicts the property and the MAE is taken over all samples, valid or not. Validity and stability of
the same samples are reported. Reference rows (U-bound, #Atoms, L-bound) come from
``benchmarks.qm9_predictors``.
"""
from __future__ import annotations

import sys
import time

import click
import numpy as np
import torch

from benchmarks.record import emit, machine_info
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.generate import Guidance, generate
from molctrl.metrics import evaluate_molecules, train_smiles
from molctrl.noisy_predictor import NoisyPropertyPredictor
from molctrl.predictor import PROPERTIES, likelihood_reward
from molctrl.weights import load_predictor, load_prior


def _row(name: str, sample, conditions: PropertyConditions, evaluator, properties, n: int, seed: int) -> dict:
    """MAE per property, and validity / stability over all of the row's samples."""
    row, molecules_all, seconds = {"row": name, "mae": {}}, [], 0.0
    for prop in properties:
        g = torch.Generator().manual_seed(seed * 1000 + PROPERTIES.index(prop))  # fresh samples per property
        n_atoms = conditions.n_atoms[torch.randint(len(conditions.n_atoms), (n,), generator=g)]
        y = conditions.sample(n_atoms, g)
        y_mask = conditions.mask_from_names([prop], n)
        t0 = time.perf_counter()
        molecules = sample(y, y_mask, n_atoms, g)
        seconds += time.perf_counter() - t0
        predicted = evaluator.predict_molecules(molecules)[:, evaluator.properties.index(prop)]
        row["mae"][prop] = round(float(np.abs(predicted - y[:, PROPERTIES.index(prop)].numpy()).mean()), 5)
        molecules_all += molecules
        print(f"{name} {prop}: MAE {row['mae'][prop]}", file=sys.stderr)
    summary = evaluate_molecules(molecules_all, train_smiles(evaluator.config.setting)).summary
    return row | {k: summary[k] for k in ("validity", "atom_stability", "mol_stability", "uniqueness")} | {
        "samples_per_property": n, "sampling_seconds": round(seconds, 1)}


@click.command()
@click.option("--setting", default="qm9-noh", show_default=True)
@click.option("--method", "methods", multiple=True, metavar="NAME=MODEL",
              help="A conditioned model (from 'molctrl finetune') to score, e.g. ctrl=runs/ctrl/model.pt.")
@click.option("--guidance", "guidance_models", multiple=True, metavar="PREDICTOR",
              help="Guidance of the prior by this predictor (shipped name or path): reconstruction guidance for a "
                   "clean-data predictor, classifier guidance for a noise-aware one.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Guidance scale.")
@click.option("--unconditional", is_flag=True, help="Also score the prior itself, blind to the targets.")
@click.option("--prior", "prior_path", default=None, help="Prior for guidance rows (default: shipped).")
@click.option("--evaluator", default="qm9-noh-e3nn-Da", show_default=True)
@click.option("--property", "properties", multiple=True, type=click.Choice(PROPERTIES), default=PROPERTIES)
@click.option("-n", "n_samples", type=int, default=500, show_default=True, help="Samples per property and row.")
@click.option("--steps", type=int, default=100, show_default=True, help="Sampling steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(setting, methods, guidance_models, scale, unconditional, prior_path, evaluator, properties, n_samples, steps, seed, threads,
         out) -> None:
    """Score conditioned generators by the EDM protocol and print one JSON record."""
    if threads:
        torch.set_num_threads(threads)
    conditions = PropertyConditions.from_split(load_split(setting, "Db"))
    scorer = load_predictor(evaluator).eval()
    rows = []
    for spec in methods:
        name, _, path = spec.partition("=")
        model = load_prior(path).eval()

        def sample(y, y_mask, n_atoms, g, model=model):
            return generate(model, conditions, y, y_mask, steps, g, n_atoms=n_atoms)

        rows.append(_row(name, sample, conditions, scorer, properties, n_samples, seed) | {"model": path})
    if unconditional:
        prior = load_prior(prior_path).eval()

        def blind(y, y_mask, n_atoms, g, prior=prior):
            return generate(prior, conditions, y, y_mask, steps, g, n_atoms=n_atoms)

        rows.append(_row("prior (no control)", blind, conditions, scorer, properties, n_samples, seed))
    for predictor_name in guidance_models:
        prior = load_prior(prior_path).eval()
        predictor = load_predictor(predictor_name).eval()
        if isinstance(predictor, NoisyPropertyPredictor):
            guidance = Guidance(scale, noisy=predictor)
        else:
            guidance = Guidance(scale, reward=likelihood_reward(predictor, predictor.properties,
                                                                prior.config.type_scale))

        def guided(y, y_mask, n_atoms, g, prior=prior, guidance=guidance):
            return generate(prior, conditions, y, y_mask, steps, g, guidance, n_atoms=n_atoms)

        rows.append(_row(f"{guidance.mode} guidance ({predictor.config.arch})", guided, conditions, scorer, properties,
                         n_samples, seed) | {"reward_model": predictor_name, "scale": scale})
    record = {"setting": setting, "evaluator": evaluator, "seed": seed, "sampling_steps": steps, "rows": rows,
              "threads": torch.get_num_threads(),
              "command": "python -m benchmarks.qm9_conditional " + " ".join(sys.argv[1:]), "machine": machine_info()}
    emit(record, out, indent=1)


if __name__ == "__main__":
    main()
