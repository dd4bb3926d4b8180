"""QM9 data: EDM's split reproduced exactly, both settings, export."""
import numpy as np
import pytest

from molctrl.data.qm9 import N_MOLECULES, edm_split_indices, load_raw, load_split


@pytest.fixture(scope="module")
def splits():
    return edm_split_indices()


def test_split_sizes_and_partition(splits):
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 100_000, "valid": 17_748, "test": 13_083, "Da": 50_000, "Db": 50_000}
    every = np.concatenate([splits["train"], splits["valid"], splits["test"]])
    assert np.array_equal(np.sort(every), np.arange(N_MOLECULES))
    assert np.array_equal(np.sort(np.concatenate([splits["Da"], splits["Db"]])), splits["train"])


def test_split_follows_the_legacy_numpy_recipe(splits):
    np.random.seed(0)
    perm = np.random.permutation(N_MOLECULES)
    assert np.array_equal(splits["valid"], np.sort(perm[100_000:117_748]))
    np.random.seed(42)
    half = np.random.permutation(100_000)
    assert np.array_equal(splits["Db"], np.sort(perm[:100_000])[half[50_000:]])
    again = edm_split_indices()
    assert all(np.array_equal(again[k], splits[k]) for k in splits)


def test_qm9_indices_of_splits():
    raw = load_raw()
    assert len(raw["index"]) == N_MOLECULES and np.all(np.diff(raw["index"]) > 0)
    valid = load_split("qm9", "valid")
    assert valid.qm9_index[:5].tolist() == [3, 21, 28, 47, 56]  # water (index 3) is a validation molecule


def test_settings():
    with_h = load_split("qm9", "test")
    heavy = load_split("qm9-noh", "test")
    assert with_h.n_atoms.max() == 29 and heavy.n_atoms.max() == 9
    assert np.array_equal(with_h.qm9_index, heavy.qm9_index)
    h = with_h.setting.atom_encoder["H"]
    n_heavy = (with_h.types >= 0).sum(1) - (with_h.types == h).sum(1)
    assert np.array_equal(heavy.n_atoms, n_heavy)
    mol = heavy.molecules()[0]
    assert mol.title == f"qm9 index {heavy.qm9_index[0]}" and "H" not in mol.symbols
    # heavy atoms keep their coordinates
    ref = with_h.molecules()[0]
    keep = [i for i, s in enumerate(ref.symbols) if s != "H"]
    assert np.allclose(mol.positions, ref.positions[keep])


def test_export_cli(tmp_path):
    from click.testing import CliRunner

    from molctrl.cli import main
    from molctrl.io import read_molecules

    out = tmp_path / "valid.xyz"
    result = CliRunner().invoke(main, ["data", "export", "--setting", "qm9", "--split", "valid",
                                       "--out", str(out), "--limit", "3"])
    assert result.exit_code == 0, result.output
    mols = read_molecules(out)
    assert [m.title for m in mols] == ["qm9 index 3", "qm9 index 21", "qm9 index 28"]
    assert mols[0].symbols == ["O", "H", "H"]
