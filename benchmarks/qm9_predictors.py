"""Property predictors on QM9: the reference rows of the conditional benchmark, and the reward models.

    python -m benchmarks.qm9_predictors --setting qm9-noh [--seed 0]
        [--evaluator qm9-noh-egnn-Da --evaluator qm9-noh-e3nn-Da]
        [--reward qm9-noh-egnn-Db --reward qm9-noh-e3nn-Db] [--out benchmarks/results/qm9_predictors_qm9-noh.json]

Reference rows (EDM protocol, MAE per property on the 50,000 real Db molecules):

* ``U-bound`` — a Da evaluator's predictions against the Db labels shuffled (seed ``--seed``);
* ``#Atoms`` — the median Da label of molecules with the same atom count;
* ``L-bound`` — a Da evaluator's predictions against the true Db labels.

The goal for the evaluators is L-bound ≤ #Atoms / 5 for every property (``goal_ratio`` ≤ 0.2).
Reward predictors (trained on Db) are scored on Da, which they never saw, and on the test split,
where the coverage of their calibrated one-sigma interval ``|y − f(x)| < s`` is also reported (0.683
is nominal; ``s`` was fitted on the validation split).
"""
from __future__ import annotations

import sys
import time

import click
import numpy as np
import torch

from benchmarks.record import command_line, emit, machine_info
from common.weights import read_tree
from molctrl.data.qm9 import SETTINGS, QM9Split, load_split
from molctrl.predictor import PROPERTIES, AtomCountPredictor
from molctrl.weights import load_predictor, predictor_path


def _mae(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {p: round(float(v), 5) for p, v in zip(PROPERTIES, np.abs(predictions - labels).mean(0))}


def _predict(name: str, split: QM9Split) -> tuple[np.ndarray, dict]:
    """Predictions ``(M, 6)`` of a six-property model, and what the model is."""
    model = load_predictor(name).eval()
    if model.properties != PROPERTIES:
        raise click.BadParameter(f"{name} predicts {model.properties}, the benchmark needs {PROPERTIES}")
    payload = read_tree(predictor_path(name))
    t0 = time.perf_counter()
    predictions = model.predict_arrays(split.types, split.positions)
    info = {"model": str(name), "arch": model.config.arch, "train_step": payload.get("step"),
            "train_seconds": payload.get("train_seconds"), "parameters": sum(p.numel() for p in model.parameters()),
            "predict_seconds": round(time.perf_counter() - t0, 1), "molecules": len(split)}
    return predictions, info


@click.command()
@click.option("--setting", type=click.Choice(list(SETTINGS)), default="qm9-noh", show_default=True)
@click.option("--evaluator", "evaluators", multiple=True, default=("qm9-noh-egnn-Da", "qm9-noh-e3nn-Da"),
              show_default=True, help="Da-trained evaluators (shipped name or model.safetensors).")
@click.option("--reward", "rewards", multiple=True, default=("qm9-noh-egnn-Db", "qm9-noh-e3nn-Db"),
              show_default=True, help="Db-trained reward predictors (shipped name or model.safetensors).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the label shuffle (U-bound).")
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON record here.")
def main(setting, evaluators, rewards, seed, threads, out) -> None:
    """Print the reference rows and the predictors' errors as one JSON record."""
    if threads:
        torch.set_num_threads(threads)
    da, db, test = (load_split(setting, s) for s in ("Da", "Db", "test"))
    y_da, y_db, y_test = da.labels(PROPERTIES), db.labels(PROPERTIES), test.labels(PROPERTIES)
    shuffled = y_db[np.random.default_rng(seed).permutation(len(y_db))]
    atoms = _mae(AtomCountPredictor(da.n_atoms, y_da)(db.n_atoms), y_db)
    rows = [{"row": "#Atoms", "mae": atoms}]
    models = []
    for name in evaluators:
        predictions, info = _predict(name, db)
        lower = _mae(predictions, y_db)
        rows.append({"row": f"U-bound ({info['arch']})", "mae": _mae(predictions, shuffled)})
        rows.append({"row": f"L-bound ({info['arch']})", "mae": lower,
                     "goal_ratio": {p: round(lower[p] / atoms[p], 4) for p in PROPERTIES}})
        models.append(info | {"role": "evaluator (Da)", "scored_on": "Db"})
        print(f"{name}: L-bound {lower}", file=sys.stderr)
    for name in rewards:
        model = load_predictor(name)
        predictions, info = _predict(name, da)
        test_predictions, _ = _predict(name, test)
        s = model.calibration.double().numpy()
        coverage = (np.abs(test_predictions - y_test) < s).mean(0)
        models.append(info | {"role": "reward (Db)", "mae_on_Da": _mae(predictions, y_da),
                              "mae_on_test": _mae(test_predictions, y_test),
                              "calibration_s": dict(zip(PROPERTIES, s.round(5).tolist())),
                              "test_coverage_within_s": dict(zip(PROPERTIES, coverage.round(4).tolist()))})
        print(f"{name}: MAE on Da {models[-1]['mae_on_Da']}", file=sys.stderr)
    record = {"setting": setting, "seed": seed, "rows": rows, "models": models, "threads": torch.get_num_threads(),
              "command": command_line("benchmarks.qm9_predictors"), "machine": machine_info()}
    emit(record, out, indent=1)


if __name__ == "__main__":
    main()
