"""Property predictors: invariances of both architectures, hydrogen handling, calibration, rewards, CLIs."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.rewards import WeightedSum
from common.weights import read_tree
from molctrl.cli import main
from molctrl.molecule import Molecule
from molctrl.predictor import (
    ONE_SIGMA,
    AtomCountPredictor,
    PredictorConfig,
    PropertyPredictor,
    fit_calibration,
    likelihood_reward,
)
from molctrl.regressors import dipole_magnitude
from tests.geometry import random_orthogonal

ARCHS = ["egnn", "e3nn", "egnn+dipole", "e3nn+dipole"]


def _predictor(arch, setting="qm9-noh", seed=0):
    torch.manual_seed(seed)
    arch, _, head = arch.partition("+")
    config = PredictorConfig(setting=setting, arch=arch, hidden=16 if arch == "egnn" else 8, n_layers=2,
                             dipole_head=head == "dipole")
    model = PropertyPredictor(config, label_mean=np.arange(6.0), label_scale=np.full(6, 2.0)).double()
    model.calibration = torch.full((6,), 0.5)
    return model


def _molecules(b=3, n=7, n_types=4):
    g = torch.Generator().manual_seed(1)
    types = torch.randint(0, n_types, (b, n), generator=g)
    types[0, 5:] = -1
    positions = torch.randn(b, n, 3, generator=g, dtype=torch.float64) * 1.5
    return types, positions


@pytest.fixture(scope="module", params=ARCHS)
def predictor(request):
    return _predictor(request.param)


def _regress(model, types, positions):
    one_hot, mask = model.encode(types)
    return model.regress(one_hot, positions, mask)


@pytest.mark.parametrize("reflect", [False, True])
def test_predictions_are_invariant_to_rotations_reflections_and_translations(predictor, reflect):
    types, pos = _molecules()
    y = _regress(predictor, types, pos)
    moved = pos @ random_orthogonal(7, reflect).T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(_regress(predictor, types, moved), y, atol=1e-9)
    assert (y[0] - y[1]).abs().max() > 1e-4  # not vacuous: different molecules, different outputs


def test_predictions_are_invariant_to_atom_order_and_padding(predictor):
    types, pos = _molecules()
    y = _regress(predictor, types, pos)
    perm = torch.randperm(types.shape[1], generator=torch.Generator().manual_seed(3))
    assert torch.allclose(_regress(predictor, types[:, perm], pos[:, perm]), y, atol=1e-9)
    padded_types = torch.cat([types, torch.full((3, 2), -1)], 1)
    padded_pos = torch.cat([pos, torch.randn(3, 2, 3, dtype=torch.float64) * 10], 1)
    assert torch.allclose(_regress(predictor, padded_types, padded_pos), y, atol=1e-9)


def test_heavy_atom_model_drops_hydrogens_and_rejects_unknown_elements(predictor):
    water_like = Molecule(["O", "C", "H", "H"], np.array([[0, 0, 0], [1.4, 0, 0], [-0.6, 0.7, 0], [-0.6, -0.7, 0.1]]))
    heavy = Molecule(["O", "C"], water_like.positions[:2])
    assert np.allclose(predictor.predict_molecules([water_like]), predictor.predict_molecules([heavy]))
    with pytest.raises(ValueError, match=r"molecule 2 \(bad\): element\(s\) S not in the qm9-noh alphabet"):
        predictor.predict_molecules([heavy, Molecule(["C", "S"], np.zeros((2, 3)), "bad")])
    with pytest.raises(ValueError, match="no atoms"):
        predictor.predict_molecules([Molecule(["H"], np.zeros((1, 3)))])


def test_with_hydrogen_model_needs_hydrogens():
    model = _predictor("egnn", setting="qm9")
    with pytest.raises(ValueError, match="needs explicit hydrogens"):
        model.predict_molecules([Molecule(["C", "O"], np.array([[0, 0, 0], [1.2, 0, 0]]))])


def test_calibration_recovers_a_gaussian_scale_and_holds_its_coverage_out_of_sample():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(40_000, 2))
    labels = pred + rng.normal(size=(40_000, 2)) * [2.0, 0.1]
    assert np.allclose(fit_calibration(pred, labels), [2.0, 0.1], rtol=0.03)
    heavy = pred + rng.standard_t(3, size=(40_000, 2))  # heavy tails: RMS would over-cover
    s = fit_calibration(pred[:20_000], heavy[:20_000])
    coverage = (np.abs(heavy[20_000:] - pred[20_000:]) < s).mean(0)
    assert np.allclose(coverage, ONE_SIGMA, atol=0.01)


def test_likelihood_reward_reads_states_and_is_differentiable(predictor):
    types, pos = _molecules()
    one_hot, mask = predictor.encode(types)
    x = torch.cat([pos, one_hot * 0.25], -1).requires_grad_(True)
    reward = likelihood_reward(predictor, ["gap", "alpha"], type_scale=0.25, tail=None)
    y = torch.tensor([[2.0, 1.0, 7.0, 7.0, 7.0, 7.0]] * 3, dtype=torch.float64)  # one column per property
    r = reward(x, mask, y)
    f = _regress(predictor, types, pos)[:, [1, 0]]
    expected = (-0.5 * ((y[:, [1, 0]] - f) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi)).sum(-1)
    assert torch.allclose(r, expected)
    other = _predictor("e3nn" if predictor.config.arch == "egnn" else "egnn", seed=1)  # separately trained
    composed = WeightedSum([(1.0, likelihood_reward(predictor, ["gap"], 0.25)),
                            (1.0, likelihood_reward(other, ["alpha"], 0.25))])
    separate = likelihood_reward(predictor, ["gap"], 0.25)(x, mask, y) + likelihood_reward(other, ["alpha"], 0.25)(x, mask, y)
    assert torch.allclose(composed(x, mask, y), separate)
    only_gap = torch.zeros_like(y, dtype=torch.bool)
    only_gap[:, 1] = True
    assert torch.allclose(reward(x, mask, y, only_gap), likelihood_reward(predictor, ["gap"], 0.25)(x, mask, y))
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[..., :3].abs().max() > 0 and x.grad[..., 3:].abs().max() > 0
    with pytest.raises(ValueError, match="does not predict r2"):
        likelihood_reward(predictor, ["r2"], 0.25)


def test_export_round_trip_keeps_weights_and_calibration(predictor):
    again = PropertyPredictor.from_export(predictor.export()).double()
    types, pos = _molecules()
    assert torch.equal(_regress(again, types, pos), _regress(predictor, types, pos))
    assert torch.equal(again.calibration, predictor.calibration.float())
    with pytest.raises(ValueError, match="not a molctrl.predictor export"):
        PropertyPredictor.from_export({"kind": "molctrl.prior"})


def test_dipole_head_gives_the_dipole_of_point_charges_in_debye():
    # +0.5 e and −0.5 e 2 Å apart: |μ| = 1 e·Å = 4.8032 D, wherever the pair sits, whatever the
    # charges' common offset (they are made neutral), and the padded atom does not count
    positions = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0], [9.0, 9, 9]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    for offset in (0.0, 3.0):
        charges = torch.tensor([[0.5 + offset, -0.5 + offset, 7.0]], dtype=torch.float64)
        mu = dipole_magnitude(charges, positions + 5.0, mask)
        assert mu.item() == pytest.approx(4.8032, abs=1e-3)
    atomic = torch.zeros(1, 3, 3, dtype=torch.float64)
    atomic[0, 0] = torch.tensor([1.0, 0, 0])  # cancels the charges' dipole, −1 e·Å along x
    assert dipole_magnitude(torch.tensor([[0.5, -0.5, 0.0]], dtype=torch.float64), positions, mask,
                            atomic).item() == pytest.approx(0.0, abs=1e-3)


def test_dipole_head_column_is_the_dipole_in_label_units(predictor):
    if predictor.dipole_column is None:
        pytest.skip("no dipole head")
    types, pos = _molecules()
    y = _regress(predictor, types, pos)
    assert (y[:, predictor.dipole_column] >= 0).all()  # a length, in debye, whatever the label statistics


def test_config_rejects_unknown_architecture_and_property():
    with pytest.raises(ValueError, match="unknown architecture 'mlp'"):
        PredictorConfig(arch="mlp")
    with pytest.raises(ValueError, match=r"unknown properties \['r3'\]"):
        PredictorConfig(properties=("alpha", "r3"))
    with pytest.raises(ValueError, match="mu"):
        PredictorConfig(properties=("alpha",), dipole_head=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny predictor trained by the CLI (2 epochs of 192 molecules), and a file of 5 QM9 molecules."""
    root = tmp_path_factory.mktemp("predictor")
    run = root / "run"
    args = ["train", "predictor", "--run-dir", str(run), "--arch", "e3nn", "--hidden", "8", "--layers", "1",
            "--property", "alpha", "--property", "mu", "--limit", "192", "--valid-limit", "64", "--epochs", "1",
            "--batch-size", "32", "--checkpoint-every", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    molecules = root / "five.xyz"
    result = CliRunner().invoke(main, ["data", "export", "--setting", "qm9", "--split", "test", "--limit", "5",
                                       "--out", str(molecules)])
    assert result.exit_code == 0, result.output
    return run, args, molecules


def test_train_predictor_cli_writes_calibrated_model_and_resumes(trained):
    run, args, _ = trained
    log = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [3, 6]
    assert set(log[-1]["calibration_s"]) == {"alpha", "mu"}
    payload = read_tree(run / "model.safetensors")
    assert payload["step"] == 6 and len(payload["calibration"]) == 2
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "already holds a checkpoint" in refused.output
    resumed = CliRunner().invoke(main, ["train", "predictor", "--run-dir", str(run), "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output and read_tree(run / "model.safetensors")["step"] == 12
    assert json.loads((run / "run.json").read_text())["train"]["steps"] == 12  # the record follows --epochs
    again = CliRunner().invoke(main, ["train", "predictor", "--run-dir", str(run), "--resume"])  # no --epochs: the
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output  # run's own length, not 20 epochs
    assert json.loads((run / "run.json").read_text())["train"]["steps"] == 12


def test_predict_cli_prints_one_number_per_molecule(trained):
    run, _, molecules = trained
    result = CliRunner().invoke(main, ["predict", str(molecules), "--property", "mu", "--model", str(run / "model.safetensors"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert len(values) == 5 and all(isinstance(v, float) for v in values)
    table = CliRunner().invoke(main, ["predict", str(molecules), "--property", "all", "--model", str(run / "model.safetensors")])
    assert table.exit_code == 0 and len(table.output.splitlines()) == 6 and "mu (D)" in table.output


def test_predict_cli_reports_bad_input_in_one_line(trained, tmp_path):
    run, _, molecules = trained
    model = ["--model", str(run / "model.safetensors")]
    missing = CliRunner().invoke(main, ["predict", str(molecules), "--property", "gap", *model])
    assert missing.exit_code == 2 and "does not predict gap" in missing.output
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\ncomment\nC 0 0 0\nC 0 zero 0\n")
    result = CliRunner().invoke(main, ["predict", str(bad), "--property", "mu", *model])
    assert result.exit_code == 1 and f"{bad}:4:" in result.output
    assert len(result.output.strip().splitlines()) == 1
    not_weights = CliRunner().invoke(main, ["predict", str(molecules), "--property", "mu", "--model", str(bad)])
    assert not_weights.exit_code == 2 and "bad.xyz: not a weights file" in not_weights.output


def test_atom_count_predictor_is_the_median_per_size():
    n_atoms = np.array([3, 3, 3, 5, 5])
    labels = np.array([[1.0], [2.0], [10.0], [4.0], [6.0]])
    baseline = AtomCountPredictor(n_atoms, labels)
    assert np.allclose(baseline(np.array([3, 5, 4, 9])).ravel(), [2.0, 5.0, 4.0, 4.0])  # unseen sizes: overall median
