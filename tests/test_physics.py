"""GFN2-xTB recomputation (molctrl.physics), its DFT calibration and reward (molctrl.xtb_reward), and the
CLI switches that use them."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from molctrl.bonds import bond_order_matrix
from molctrl.data.qm9 import load_split
from molctrl.io import write_sdf
from molctrl.metrics import stable_atoms
from molctrl.molecule import Molecule
from molctrl.physics import judge, with_hydrogens, xtb_properties

pytest.importorskip("tblite")

#: GFN2-xTB (tblite 0.8.0) values of the first three EDM test molecules (QM9 11, 14, 22: acetaldehyde,
#: ethanol, isopropanol) at their DFT geometry with hydrogens, recorded once: HOMO, LUMO, gap (meV),
#: |μ| (D; experiment 2.75, 1.69, 1.58), α (Bohr³).
REFERENCE = {
    "homo": [-11163.954, -11123.947, -11050.979],
    "lumo": [-7277.340, 1335.224, 1136.229],
    "gap": [3886.615, 12459.171, 12187.208],
    "mu": [3.10530, 1.76108, 1.84509],
    "alpha": [16.1840, 15.1258, 21.5032],
}


@pytest.fixture(scope="module")
def test_molecules():
    with_h, heavy = load_split("qm9", "test"), load_split("qm9-noh", "test")
    rows = np.arange(3)
    return with_h.subset(rows).molecules(), heavy.subset(np.arange(200, 240)).molecules()


def test_known_molecules_reproduce_recorded_xtb_values(test_molecules):
    report = xtb_properties(test_molecules[0], workers=1)
    for name, values in REFERENCE.items():
        np.testing.assert_allclose(report.values[name], values, rtol=1e-4, atol=1e-3, err_msg=name)


def test_added_hydrogens_complete_every_valence(test_molecules):
    for molecule in test_molecules[1]:
        try:
            symbols, positions = with_hydrogens(molecule)
        except ValueError:
            continue  # a charged group the distance rules cannot sanitise: judged NaN with its reason
        assert symbols[: molecule.n_atoms] == molecule.symbols
        np.testing.assert_allclose(positions[: molecule.n_atoms], molecule.positions, atol=1e-6)  # heavy atoms kept
        orders = bond_order_matrix(symbols, positions)  # the metrics' own bonds, read off the new geometry
        assert stable_atoms(symbols, orders).all(), molecule.title


def test_broken_molecules_get_nan_and_a_one_line_reason():
    pentavalent = Molecule(["C"] * 6, np.array([[0, 0, 0], [1.5, 0, 0], [-1.5, 0, 0], [0, 1.5, 0], [0, -1.5, 0],
                                                [0, 0, 1.5]], dtype=float))
    values, reason = judge(pentavalent)
    assert np.isnan(list(values.values())).all()
    assert "sanitisation failed" in reason and "\n" not in reason
    values, reason = judge(Molecule(["C", "O"], np.array([[0, 0, 0], [np.nan, 0, 0]])))
    assert np.isnan(values["gap"]) and "non-finite" in reason


def test_results_do_not_depend_on_the_workers_and_the_time_limit_is_kept(test_molecules):
    molecules = test_molecules[1][:6]
    one = xtb_properties(molecules, workers=1, polarizability=False)
    two = xtb_properties(molecules, workers=2, polarizability=False)
    for name in ("gap", "mu"):
        np.testing.assert_array_equal(one.values[name], two.values[name])
    late = xtb_properties(molecules[:2], workers=1, time_limit=1e-4)
    assert all("time limit" in reason for reason in late.reasons) and np.isnan(late.values["gap"]).all()


def test_calibration_maps_continue_by_their_tangent_and_bad_records_name_the_file(tmp_path):
    from molctrl.xtb_reward import CalibrationMap, XTBCalibration, fit_map

    xtb = np.linspace(0.0, 2.0, 50)
    fitted = fit_map(np.append(xtb, np.nan), np.append(3 * xtb**2 - xtb + 1, 7.0))  # the NaN row is left out
    np.testing.assert_allclose(fitted.coefficients, [3, -1, 1], atol=1e-9)
    assert fitted.domain == (0.0, 2.0) and fitted.residual_std < 1e-9
    q = CalibrationMap((3.0, -1.0, 1.0), (0.0, 2.0), 1.0)
    assert q(np.array([3.0]))[0] == pytest.approx(11 + 11 * 1.0)  # q(2) = 11, q'(2) = 11
    bad = tmp_path / "cal.json"
    bad.write_text(json.dumps({"maps": {"heavy_atoms": {}}}))
    with pytest.raises(ValueError, match=rf"^{bad}: not an xTB calibration record"):
        XTBCalibration.load(bad)


def test_xtb_likelihood_prefers_the_target_a_molecule_has(test_molecules):
    from molctrl.predictor import PROPERTIES
    from molctrl.xtb_reward import XTBCalibration, XTBLikelihood

    molecules = test_molecules[1][:4]
    reward = XTBLikelihood(lambda x, mask: [molecules[int(i)] for i in x[:, 0, 0]], ["gap"], workers=1)
    try:
        own = XTBCalibration.load().to_dft(xtb_properties(molecules, workers=1, polarizability=False), molecules)["gap"]
        y = torch.zeros(8, len(PROPERTIES), dtype=torch.float64)
        y[:4, 1], y[4:, 1] = torch.as_tensor(own), torch.as_tensor(own) + 3000.0  # the own gap, or 3 eV off
        y_mask = torch.zeros_like(y, dtype=torch.bool)
        y_mask[:, 1] = True
        x = torch.arange(8.0).remainder(4).view(8, 1, 1).expand(8, 2, 3).contiguous()
        r = reward(x, torch.ones(8, 2, dtype=torch.bool), y, y_mask)
        judged = np.isfinite(own)
        assert judged.sum() >= 3 and bool((r[:4][judged] > r[4:][judged]).all())
        assert not reward.differentiable
        scores = reward.predict(x[:4], torch.ones(4, 2, dtype=torch.bool))  # a pool scored once, (M, 1)
        pairs = reward.log_likelihood(scores.unsqueeze(0), y[:4].unsqueeze(1), y_mask[:4].unsqueeze(1))  # (B, M)
        torch.testing.assert_close(pairs.diagonal(), r[:4])
        failed = torch.as_tensor(~judged)
        assert bool((pairs[:, failed] == -50.0).all())  # FAILED_LOG_LIKELIHOOD, one judged target
    finally:
        reward.close()


@pytest.fixture(scope="module")
def generated_sdf(test_molecules, tmp_path_factory):
    molecules = [Molecule(m.symbols, m.positions, m.title, {"target_gap": 6500.0}) for m in test_molecules[1][:5]]
    path = tmp_path_factory.mktemp("physics") / "generated.sdf"
    write_sdf(path, molecules)
    return path


def test_evaluate_physics_reports_xtb_columns_and_the_mae_to_the_file_s_targets(generated_sdf, tmp_path):
    from molctrl.cli import main

    details = tmp_path / "details.csv"
    result = CliRunner().invoke(main, ["evaluate", str(generated_sdf), "--no-novelty", "--physics", "--workers", "1",
                                       "--details", str(details), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["physics_judged"] >= 4 and 0 < summary["physics_mae_gap"] < 5000
    assert "physics_mae_mu" not in summary  # no mu target in the file
    header = details.read_text().splitlines()[0].split(",")
    assert {"xtb_gap", "xtb_gap_dft", "xtb_alpha_dft", "xtb_failure"} <= set(header)
    text = CliRunner().invoke(main, ["evaluate", str(generated_sdf), "--no-novelty", "--physics", "--workers", "1"])
    assert "GFN2-xTB" in text.output and "MAE to targets" in text.output


def test_physics_switches_say_in_one_line_when_tblite_is_missing(generated_sdf, tmp_path, monkeypatch):
    import molctrl.physics
    from molctrl.cli import main

    monkeypatch.setattr(molctrl.physics, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["evaluate", str(generated_sdf), "--no-novelty", "--physics"])
    assert result.exit_code == 1 and "needs the tblite package" in result.output
    result = CliRunner().invoke(main, ["generate", "--target", "gap=6500", "--verify", "--out", str(tmp_path / "m.sdf")])
    assert result.exit_code == 2 and "--verify: GFN2-xTB needs the tblite package" in result.output
    plain = CliRunner().invoke(main, ["evaluate", str(generated_sdf), "--no-novelty", "--json"])
    assert plain.exit_code == 0, plain.output  # everything else works


def test_generate_verifies_by_physics_and_judges_final_weights_by_xtb(tmp_path):
    from molctrl.cli import main
    from molctrl.io import read_molecules

    out = tmp_path / "gap.sdf"
    result = CliRunner().invoke(main, ["generate", "--target", "gap=6500", "-n", "2", "--particles", "3", "--steps", "12",
                                       "--reward", "xtb", "--verify", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert {"physics_judged", "physics_mean_gap", "physics_mae_gap", "mae_gap"} <= set(summary)
    assert summary["final_weights"] == "xtb"
    for molecule in read_molecules(out):
        assert "xtb_gap_dft" in molecule.properties or "xtb_failure" in molecule.properties
    for target, weights in (("gap=6500", "both"), ("alpha=70", "model")):  # the default: xTB where it judges well
        result = CliRunner().invoke(main, ["generate", "--target", target, "-n", "1", "--particles", "2", "--steps", "5",
                                           "--out", str(tmp_path / "default.sdf"), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output.strip().splitlines()[-1])["final_weights"] == weights
    bad = CliRunner().invoke(main, ["generate", "--target", "Cv=30", "--reward", "xtb", "--out", str(tmp_path / "c.sdf")])
    assert bad.exit_code == 2 and "GFN2-xTB cannot judge Cv" in bad.output
    once = CliRunner().invoke(main, ["generate", "--target", "gap=6500", "--reward", "xtb", "--particles", "0",
                                     "--out", str(tmp_path / "o.sdf")])
    assert once.exit_code == 2 and "--reward xtb judges the particles" in once.output


def test_final_judges_compose_the_predictor_and_physics():
    from common.rewards import Reward, WeightedSum
    from molctrl.xtb_reward import XTBLikelihood, effective_judge, final_judge

    model = Reward()
    assert final_judge("model", model, None, ["gap"]) is None
    assert final_judge("both", model, None, ["alpha", "Cv"]) is None  # nothing xTB judges well: the predictor alone
    both = final_judge("both", model, None, ["alpha", "gap", "mu"])
    assert isinstance(both, WeightedSum) and both.terms[0] is model
    assert both.terms[1].regressor.properties == ["gap", "mu"] and not both.differentiable
    assert isinstance(final_judge("xtb", model, None, ["alpha"]), XTBLikelihood)
    assert [effective_judge(j, ["alpha", "Cv"]) for j in ("model", "xtb", "both")] == ["model", "xtb", "model"]
    assert effective_judge("both", ["alpha", "mu"]) == "both"
    judge = Reward()  # a second predictor that reads only the finished particles
    assert final_judge("model", model, None, ["gap"], judge) is judge
    assert final_judge("both", model, None, ["Cv"], judge) is judge
    assert final_judge("both", model, None, ["gap"], judge).terms[0] is judge
    with pytest.raises(ValueError, match="cannot judge Cv"):
        final_judge("xtb", model, None, ["gap", "Cv"])
    with pytest.raises(ValueError, match="unknown judge 'dft'"):
        final_judge("dft", model, None, ["gap"])


def test_rgdm_scores_its_candidate_pool_by_xtb(tmp_path):
    from common.weights import read_tree
    from molctrl.cli import main

    run = tmp_path / "rgdm-xtb"
    result = CliRunner().invoke(main, ["finetune", "--method", "rgdm", "--proposal", "prior", "--reward-model", "xtb",
                                       "--property", "gap", "--pool-size", "12", "--pool-steps", "5", "--candidates", "6",
                                       "--steps", "1", "--batch-size", "2", "--run-dir", str(run), "--threads", "1"])
    assert result.exit_code == 0, result.output
    pool = read_tree(run / "pool.safetensors")
    # one xTB gap (DFT scale) per pool molecule (at least 32 of each atom count); NaN where xTB could not judge
    assert pool["scores"].shape == (len(pool["types"]), 1)
    bad = CliRunner().invoke(main, ["finetune", "--method", "rgdm", "--reward-model", "xtb", "--property", "Cv",
                                    "--run-dir", str(tmp_path / "cv")])
    assert bad.exit_code == 2 and "GFN2-xTB judges property targets of" in bad.output
