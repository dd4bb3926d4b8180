"""The shipped qm9-noh property predictors: accuracy on real molecules, calibration on held-out data,
invariance, and the predict CLI on files with and without hydrogens."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from molctrl.cli import main
from molctrl.data.qm9 import load_split
from molctrl.predictor import ONE_SIGMA, PROPERTIES, AtomCountPredictor
from molctrl.weights import PREDICTOR_NAMES, load_predictor
from tests.geometry import random_orthogonal

#: Upper bounds on MAE / #Atoms-baseline MAE over 1,000 Db molecules. The goal is 0.2 everywhere; these
#: are what the shipped evaluators reach on all 50,000 Db molecules (benchmarks/results/
#: qm9_predictors_qm9-noh.json) with room for the smaller sample: EGNN misses the goal on μ only
#: (0.24; with the dipole head 0.197, qm9_predictors_egnn_dipole_qm9-noh.json), the e3nn network on Δε,
#: HOMO, LUMO and μ (0.26, 0.44, 0.22, 0.54).
LIMITS = {
    "qm9-noh-egnn-Da": {"alpha": 0.2, "gap": 0.2, "homo": 0.2, "lumo": 0.2, "mu": 0.3, "Cv": 0.2},
    "qm9-noh-egnn-Da-dipole": {"alpha": 0.2, "gap": 0.2, "homo": 0.2, "lumo": 0.2, "mu": 0.25, "Cv": 0.2},
    "qm9-noh-e3nn-Da": {"alpha": 0.2, "gap": 0.32, "homo": 0.52, "lumo": 0.27, "mu": 0.62, "Cv": 0.2},
}


@pytest.fixture(scope="module")
def db_sample():
    return load_split("qm9-noh", "Db").subset(slice(1000))


@pytest.mark.parametrize("name", [n for n in PREDICTOR_NAMES if "-Da" in n])
def test_evaluators_beat_a_fifth_of_the_atom_count_baseline(name, db_sample):
    da = load_split("qm9-noh", "Da")
    labels = db_sample.labels(PROPERTIES)
    baseline = np.abs(AtomCountPredictor(da.n_atoms, da.labels(PROPERTIES))(db_sample.n_atoms) - labels).mean(0)
    model = load_predictor(name).eval()
    mae = np.abs(model.predict_arrays(db_sample.types, db_sample.positions) - labels).mean(0)
    ratio = dict(zip(PROPERTIES, (mae / baseline).round(3)))
    assert all(r < LIMITS[name][p] for p, r in ratio.items()), ratio


@pytest.mark.parametrize("name", PREDICTOR_NAMES)
def test_calibrated_one_sigma_interval_holds_on_the_test_split(name):
    test = load_split("qm9-noh", "test")
    test = test.subset(np.random.default_rng(0).choice(len(test), 3000, replace=False))  # rows are in QM9 order
    model = load_predictor(name).eval()
    residuals = np.abs(model.predict_arrays(test.types, test.positions) - test.labels(PROPERTIES))
    coverage = (residuals < model.calibration.numpy()).mean(0)
    assert np.allclose(coverage, ONE_SIGMA, atol=0.035), dict(zip(PROPERTIES, coverage.round(3)))


@pytest.mark.parametrize("name", ["qm9-noh-egnn-Db", "qm9-noh-e3nn-Db"])
def test_shipped_predictors_are_invariant_on_real_molecules(name, db_sample):
    model = load_predictor(name).eval()
    types, pos = db_sample.types[:64], db_sample.positions[:64].astype(np.float64)
    moved = pos @ random_orthogonal(11, reflect=True).numpy().T + np.array([2.0, -1.0, 0.5])
    perm = np.random.default_rng(0).permutation(types.shape[1])
    base = model.predict_arrays(types, pos)
    assert np.allclose(model.predict_arrays(types, moved), base, rtol=1e-4, atol=1e-3 * np.abs(base).mean(0))
    assert np.allclose(model.predict_arrays(types[:, perm], pos[:, perm]), base, rtol=1e-4,
                       atol=1e-3 * np.abs(base).mean(0))


def test_predict_cli_drops_hydrogens_for_the_heavy_atom_model(tmp_path):
    files = {}
    for setting in ("qm9", "qm9-noh"):
        files[setting] = tmp_path / f"{setting}.sdf"
        result = CliRunner().invoke(main, ["data", "export", "--setting", setting, "--split", "test", "--limit", "8",
                                           "--out", str(files[setting])])
        assert result.exit_code == 0, result.output
    outputs = [CliRunner().invoke(main, ["predict", str(files[s]), "--property", "gap", "--json"]) for s in files]
    assert all(o.exit_code == 0 for o in outputs), [o.output for o in outputs]
    with_h, heavy = (np.array(json.loads(o.output)) for o in outputs)
    assert len(with_h) == 8 and np.allclose(with_h, heavy, atol=1e-3)
    labels = load_split("qm9-noh", "test").properties["gap"][:8]
    assert np.abs(heavy - labels).mean() < 300  # meV; the label spread (mean absolute deviation) is ~1,000


def test_shipped_predictors_exist_with_records():
    from molctrl.weights import predictor_path

    for name in PREDICTOR_NAMES:
        path = predictor_path(name)
        assert path.exists() and path.with_suffix(".md").exists(), name
        assert load_predictor(name).properties == PROPERTIES
    assert isinstance(load_predictor(PREDICTOR_NAMES[0]).calibration, torch.Tensor)
