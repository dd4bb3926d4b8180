"""Bond orders, EDM's stability/validity/uniqueness/novelty, training SMILES and ``molctrl evaluate``."""
from __future__ import annotations

import csv
import importlib
import json
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner
from rdkit import Chem

from molctrl import metrics
from molctrl.bonds import ALLOWED_VALENCES, bond_order_matrix
from molctrl.io import write_xyz
from molctrl.metrics import (
    EXACT_VALENCE,
    SUMMARY_KEYS,
    VALENCE_NOT_EXCEEDED,
    evaluate_molecules,
    largest_fragment_smiles,
    stable_atoms,
)
from molctrl.molecule import Molecule

# ``molctrl.cli`` re-exports the command under the module's name, so fetch the module itself.
cli_evaluate = importlib.import_module("molctrl.cli.evaluate")

CH = 1.09  # Å
TETRAHEDRAL = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)


def _methyl(carbon: np.ndarray, away: np.ndarray) -> np.ndarray:
    """Three H positions completing a tetrahedron at ``carbon`` whose fourth bond points along ``-away``."""
    away = away / np.linalg.norm(away)
    side = np.cross(away, [0.0, 0.0, 1.0] if abs(away[2]) < 0.9 else [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    third = np.cross(away, side)
    angles = 2 * np.pi * np.arange(3) / 3
    directions = away / 3 + np.sqrt(8) / 3 * (np.cos(angles)[:, None] * side + np.sin(angles)[:, None] * third)
    return carbon + CH * directions


def ethane(cc: float = 1.54, shift: float = 0.0) -> Molecule:
    c1, c2 = np.array([-cc / 2, 0, 0]), np.array([cc / 2, 0, 0])
    pos = np.vstack([c1, c2, _methyl(c1, c1 - c2), _methyl(c2, c2 - c1)]) + shift
    return Molecule(["C", "C"] + ["H"] * 6, pos, "ethane")


def ethene(cc: float = 1.34) -> Molecule:
    s, c = np.sin(np.pi / 3), np.cos(np.pi / 3)
    h = [[-cc / 2 - CH * c, CH * s, 0], [-cc / 2 - CH * c, -CH * s, 0], [cc / 2 + CH * c, CH * s, 0], [cc / 2 + CH * c, -CH * s, 0]]
    return Molecule(["C", "C", "H", "H", "H", "H"], np.array([[-cc / 2, 0, 0], [cc / 2, 0, 0], *h]), "ethene")


def ethyne(cc: float = 1.20) -> Molecule:
    x = [-cc / 2 - 1.06, -cc / 2, cc / 2, cc / 2 + 1.06]
    return Molecule(["H", "C", "C", "H"], np.array([[v, 0, 0] for v in x]), "ethyne")


def water(shift: float = 0.0) -> Molecule:
    return Molecule(["O", "H", "H"], np.array([[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]]) + shift, "water")


def methane() -> Molecule:
    return Molecule(["C"] + ["H"] * 4, np.vstack([np.zeros(3), CH * TETRAHEDRAL]), "methane")


def pentavalent_carbon() -> Molecule:
    directions = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]])
    return Molecule(["C"] + ["H"] * 5, np.vstack([np.zeros(3), CH * directions]), "CH5")


# ----------------------------------------------------------------------------------------------
# Bond orders


@pytest.mark.parametrize("distance, order", [
    (1.54, 1), (1.34, 2), (1.20, 3),
    (1.6395, 1), (1.6405, 0), (1.3895, 2), (1.3905, 1), (1.2295, 3), (1.2305, 2),  # 154+10, 134+5, 120+3 pm
])
def test_carbon_carbon_bond_order_from_distance(distance, order):
    orders = bond_order_matrix(["C", "C"], np.array([[0, 0, 0], [distance, 0, 0]]))
    assert orders.tolist() == [[0, order], [order, 0]]


@pytest.mark.parametrize("make, cc_order", [(ethane, 1), (ethene, 2), (ethyne, 3)])
def test_hydrocarbons_bond_orders_and_stability(make, cc_order):
    mol = make()
    orders = bond_order_matrix(mol.symbols, mol.positions)
    carbons = [i for i, s in enumerate(mol.symbols) if s == "C"]
    assert orders[carbons[0], carbons[1]] == cc_order
    assert (orders == orders.T).all() and (np.diag(orders) == 0).all()
    assert stable_atoms(mol.symbols, orders).all()


def test_water_and_methane_are_stable():
    for mol in (water(), methane()):
        orders = bond_order_matrix(mol.symbols, mol.positions)
        assert stable_atoms(mol.symbols, orders).all()
        assert orders.sum() == 2 * (mol.n_atoms - 1)


def test_carbon_with_five_neighbours_is_unstable():
    mol = pentavalent_carbon()
    orders = bond_order_matrix(mol.symbols, mol.positions)
    assert orders[0].sum() == 5
    assert stable_atoms(mol.symbols, orders).tolist() == [False] + [True] * 5


def test_carbon_sulfur_double_bond_whichever_atom_comes_first():
    pos = np.array([[0, 0, 0], [1.62, 0, 0]])
    assert bond_order_matrix(["C", "S"], pos)[0, 1] == 2
    assert bond_order_matrix(["S", "C"], pos)[0, 1] == 2


def test_untabulated_pairs_and_elements_never_bond():
    pos = np.array([[0, 0, 0], [1.0, 0, 0]])
    assert bond_order_matrix(["B", "C"], pos).sum() == 0
    assert bond_order_matrix(["Na", "H"], pos).sum() == 0


def test_several_allowed_valences():
    assert ALLOWED_VALENCES["P"] == (3, 5)
    orders = np.zeros((2, 2), dtype=int)
    for total, stable in [(3, True), (4, False), (5, True)]:
        orders[0, 1] = orders[1, 0] = total
        assert stable_atoms(["P", "Xe"], orders).tolist() == [stable, False]


def test_heavy_atom_definition_allows_missing_hydrogens():
    orders = np.array([[0, 1], [1, 0]])
    assert stable_atoms(["C", "O"], orders, EXACT_VALENCE).tolist() == [False, False]
    assert stable_atoms(["C", "O"], orders, VALENCE_NOT_EXCEEDED).tolist() == [True, True]
    assert stable_atoms(["F", "F"], 2 * orders, VALENCE_NOT_EXCEEDED).tolist() == [False, False]


# ----------------------------------------------------------------------------------------------
# Validity, uniqueness, novelty


def _heavy_smiles(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.RemoveHs(Chem.MolFromSmiles(smiles)))


def test_valid_and_invalid_molecules():
    for mol, expected in [(ethane(), "CC"), (ethene(), "C=C"), (ethyne(), "C#C"), (water(), "O")]:
        smiles = largest_fragment_smiles(mol.symbols, bond_order_matrix(mol.symbols, mol.positions))
        assert smiles is not None and _heavy_smiles(smiles) == expected
    bad = pentavalent_carbon()
    assert largest_fragment_smiles(bad.symbols, bond_order_matrix(bad.symbols, bad.positions)) is None


def test_largest_fragment_decides_the_smiles():
    pair = Molecule(water().symbols + methane().symbols, np.vstack([water(shift=10.0).positions, methane().positions]))
    smiles = largest_fragment_smiles(pair.symbols, bond_order_matrix(pair.symbols, pair.positions))
    assert _heavy_smiles(smiles) == "C"


def test_summary_on_a_hand_made_set():
    molecules = [ethane(), ethane(shift=3.0), water(), pentavalent_carbon()]
    water_smiles = largest_fragment_smiles(water().symbols, bond_order_matrix(water().symbols, water().positions))
    report = evaluate_molecules(molecules, reference_smiles={water_smiles, "CCO"})
    assert set(report.summary) == set(SUMMARY_KEYS) | {"stability_definition"}
    assert report.summary == {
        "n": 4,
        "atom_stability": 24 / 25,
        "mol_stability": 3 / 4,
        "validity": 3 / 4,
        "uniqueness": 2 / 3,
        "novelty": 1 / 2,
        "stability_definition": EXACT_VALENCE,
    }
    rows = report.rows
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert (rows[3].n_atoms, rows[3].n_stable_atoms, rows[3].mol_stable, rows[3].valid, rows[3].smiles) == (6, 5, False, False, "")
    assert rows[0].smiles == rows[1].smiles != ""


def test_novelty_is_none_without_reference_and_zero_denominators_give_zero():
    assert evaluate_molecules([water()]).summary["novelty"] is None
    empty = evaluate_molecules([], reference_smiles=set()).summary
    assert [empty[k] for k in SUMMARY_KEYS] == [0, 0.0, 0.0, 0.0, 0.0, 0.0]
    invalid = evaluate_molecules([pentavalent_carbon()], reference_smiles=set()).summary
    assert (invalid["validity"], invalid["uniqueness"], invalid["novelty"]) == (0.0, 0.0, 0.0)


def test_stability_definition_switches_on_hydrogens_in_the_set():
    heavy = Molecule(["C", "C", "O"], np.array([[0, 0, 0], [1.52, 0, 0], [2.2, 1.2, 0]]))
    alone = evaluate_molecules([heavy]).summary
    assert alone["stability_definition"] == VALENCE_NOT_EXCEEDED
    assert (alone["atom_stability"], alone["mol_stability"], alone["validity"]) == (1.0, 1.0, 1.0)
    mixed = evaluate_molecules([heavy, water()]).summary
    assert mixed["stability_definition"] == EXACT_VALENCE
    assert mixed["atom_stability"] == 3 / 6 and mixed["mol_stability"] == 1 / 2


def test_details_csv(tmp_path):
    report = evaluate_molecules([water(), pentavalent_carbon()])
    report.write_csv(tmp_path / "d.csv")
    with open(tmp_path / "d.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "n_atoms", "n_stable_atoms", "mol_stable", "valid", "smiles"]
    assert [(r["index"], r["n_stable_atoms"], r["valid"], r["smiles"] == "") for r in rows] == [("0", "3", "True", False), ("1", "5", "False", True)]


# ----------------------------------------------------------------------------------------------
# Training SMILES (with a stand-in for the QM9 data module)


def test_train_smiles_are_built_once_and_cached(tmp_path, monkeypatch):
    calls = []

    class FakeSplit:
        def molecules(self):
            return [ethane(), ethene(), pentavalent_carbon(), ethane(shift=1.0)]

    def load_split(setting, split):
        calls.append((setting, split))
        return FakeSplit()

    fake = types.ModuleType("molctrl.data.qm9")
    fake.load_split, fake.cache_dir = load_split, lambda: tmp_path
    monkeypatch.setitem(sys.modules, "molctrl.data.qm9", fake)
    first = metrics.train_smiles("qm9")
    assert {_heavy_smiles(s) for s in first} == {"CC", "C=C"} and len(first) == 2
    assert metrics.train_smiles("qm9") == first
    assert calls == [("qm9", "train")]
    assert [p.name for p in tmp_path.iterdir()] == [f"train_smiles_qm9_v{metrics.TRAIN_SMILES_VERSION}.txt"]


def test_first_thousand_qm9_training_molecules_are_stable():
    qm9 = pytest.importorskip("molctrl.data.qm9")
    try:
        split = qm9.load_split("qm9", "train")
    except FileNotFoundError as err:
        pytest.skip(f"QM9 data not available: {err}")
    summary = evaluate_molecules(split.molecules()[:1000]).summary
    assert summary["stability_definition"] == EXACT_VALENCE
    assert summary["atom_stability"] > 0.98
    assert summary["mol_stability"] > 0.9 and summary["validity"] > 0.9


# ----------------------------------------------------------------------------------------------
# The command


@pytest.fixture
def sample_file(tmp_path):
    path = tmp_path / "samples.xyz"
    write_xyz(path, [ethane(), ethene(), water(), pentavalent_carbon()])
    return path


def test_cli_json_prints_one_object(sample_file):
    result = CliRunner().invoke(cli_evaluate.evaluate, [str(sample_file), "--json", "--no-novelty"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n"] == 4 and summary["validity"] == 0.75 and summary["novelty"] is None


def test_cli_novelty_against_the_setting_of_the_molecules(sample_file, monkeypatch):
    asked = []
    monkeypatch.setattr(cli_evaluate, "train_smiles", lambda setting: asked.append(setting) or set())
    result = CliRunner().invoke(cli_evaluate.evaluate, [str(sample_file), "--json"])
    assert result.exit_code == 0, result.output
    assert asked == ["qm9"] and json.loads(result.stdout)["novelty"] == 1.0


def test_cli_human_summary_and_details(sample_file, tmp_path):
    details = tmp_path / "rows.csv"
    result = CliRunner().invoke(cli_evaluate.evaluate, [str(sample_file), "--no-novelty", "--details", str(details)])
    assert result.exit_code == 0, result.output
    assert "validity             75.00 %" in result.stdout
    assert len(details.read_text().splitlines()) == 5


def test_cli_malformed_file_is_one_line_and_exit_code_2(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text("2\nx\nH 0 0 0\nXx 0 0 1\n")
    result = CliRunner().invoke(cli_evaluate.evaluate, [str(path), "--no-novelty"])
    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}:4: unknown element symbol 'Xx' (expected an element symbol such as C, N, O)\n"
    assert result.stdout == ""
