"""Reading and writing XYZ/SDF: round trips, one-line errors naming file and line, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pytest
from rdkit import Chem

import molctrl.io as mio
from molctrl.io import (
    MoleculeFileError,
    read_molecules,
    write_molecules,
    write_sdf,
    write_xyz,
)
from molctrl.molecule import Molecule

ETHENE = Molecule(
    ["C", "C", "H", "H", "H", "H"],
    np.array([
        [-0.67, 0.0, 0.0], [0.67, 0.0, 0.0],
        [-1.215, 0.944, 0.0], [-1.215, -0.944, 0.0], [1.215, 0.944, 0.0], [1.215, -0.944, 0.0],
    ]),
    "ethene",
    {"energy": -78.5, "label": "alkene"},
)
WATER = Molecule(["O", "H", "H"], np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]), "water")
CHLOROMETHANE = Molecule(
    ["C", "Cl", "H", "H", "H"],
    np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.78], [1.03, 0.0, -0.36], [-0.51, 0.89, -0.36], [-0.51, -0.89, -0.36]]),
    "chloromethane",
)


def _same(a: Molecule, b: Molecule, atol: float) -> None:
    assert a.symbols == b.symbols
    assert a.title == b.title
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------
# Round trips


def test_xyz_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    noisy = Molecule(WATER.symbols, WATER.positions + rng.normal(size=(3, 3)) * 1e-3, "noisy water, with commas")
    molecules = [ETHENE, noisy, CHLOROMETHANE]
    write_xyz(tmp_path / "m.xyz", molecules)
    back = read_molecules(tmp_path / "m.xyz")
    assert len(back) == 3
    for a, b in zip(molecules, back):
        _same(a, b, atol=0)


def test_sdf_round_trip_keeps_atoms_title_and_properties(tmp_path):
    write_sdf(tmp_path / "m.sdf", [ETHENE, WATER, CHLOROMETHANE])
    back = read_molecules(tmp_path / "m.sdf")
    assert len(back) == 3
    for a, b in zip([ETHENE, WATER, CHLOROMETHANE], back):
        _same(a, b, atol=1e-4)
    assert back[0].properties == {"energy": -78.5, "label": "alkene"}
    assert back[1].properties == {}


def test_sdf_bonds_follow_the_bond_order_rules(tmp_path):
    write_sdf(tmp_path / "ethene.sdf", [ETHENE])
    mol = Chem.MolFromMolFile(str(tmp_path / "ethene.sdf"), sanitize=False, removeHs=False)
    orders = sorted(b.GetBondTypeAsDouble() for b in mol.GetBonds())
    assert orders == [1, 1, 1, 1, 2]
    assert Chem.MolToSmiles(Chem.RemoveHs(Chem.MolFromMolFile(str(tmp_path / "ethene.sdf")))) == "C=C"


def test_sdf_written_without_bonds_when_rdkit_refuses_them(tmp_path, monkeypatch):
    def refuse_bonds(symbols, orders):
        if orders.any():
            raise RuntimeError("cannot take these bonds")
        return build(symbols, orders)

    build = mio.rdkit_molecule
    monkeypatch.setattr(mio, "rdkit_molecule", refuse_bonds)
    write_sdf(tmp_path / "m.sdf", [ETHENE])
    mol = Chem.MolFromMolFile(str(tmp_path / "m.sdf"), sanitize=False, removeHs=False)
    assert mol.GetNumAtoms() == 6 and mol.GetNumBonds() == 0
    _same(read_molecules(tmp_path / "m.sdf")[0], ETHENE, atol=1e-4)


def test_mol_file_and_dispatch_on_suffix(tmp_path):
    write_molecules(tmp_path / "w.mol", [WATER])
    write_molecules(tmp_path / "w.xyz", [WATER])
    assert (tmp_path / "w.xyz").read_text().splitlines()[:2] == ["3", "water"]
    _same(read_molecules(tmp_path / "w.mol")[0], WATER, atol=1e-4)
    with pytest.raises(MoleculeFileError, match=r"w\.pdb: cannot write '\.pdb' files"):
        write_molecules(tmp_path / "w.pdb", [WATER])


def test_reads_an_sdf_written_by_rdkit_with_data_fields(tmp_path):
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)N"))
    mol.SetProp("_Name", "acetamide")
    mol.SetProp("note", "two\nlines")
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i in range(mol.GetNumAtoms()):
        conf.SetAtomPosition(i, (float(i), 0.5 * i, -1.0))
    mol.AddConformer(conf)
    with Chem.SDWriter(str(tmp_path / "a.sdf")) as writer:
        writer.write(mol)
        writer.write(mol)
    back = read_molecules(tmp_path / "a.sdf")
    assert len(back) == 2
    assert back[0].title == "acetamide"
    assert back[0].symbols == [a.GetSymbol() for a in mol.GetAtoms()]
    assert back[0].properties == {"note": "two\nlines"}
    np.testing.assert_allclose(back[1].positions[5], [5.0, 2.5, -1.0])


def test_blank_lines_between_xyz_records_are_allowed(tmp_path):
    path = tmp_path / "m.xyz"
    path.write_text("1\nfirst\nH 0 0 0\n\n\n1\nsecond\nHe 1 2 3 0.5\n\n")
    assert [m.title for m in read_molecules(path)] == ["first", "second"]


# ----------------------------------------------------------------------------------------------
# Malformed input: one line naming the file and the line

XYZ_OK = "3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n"

MALFORMED_XYZ = [
    ("abc\nx\nH 0 0 0\n", "1: atom count line 'abc' is not a positive integer"),
    ("0\nx\n", "1: atom count line '0' is not a positive integer"),
    ("2 atoms\nx\nH 0 0 0\nH 0 0 1\n", "1: atom count line '2 atoms' is not a positive integer"),
    ("3\n", "2: file ends after the atom count line (expected a comment line)"),
    ("3\nwater\nO 0 0 0\nH 0 0 1\n", "5: file ends after 2 of 3 atom lines"),
    ("2\nx\nH 0 0 0\nXx 0 0 1\n", "4: unknown element symbol 'Xx' (expected an element symbol such as C, N, O)"),
    ("1\nx\ncl 0 0 0\n", "3: unknown element symbol 'cl' (expected an element symbol such as C, N, O; did you mean 'Cl'?)"),
    ("1\nx\nC 0 0 z1.2\n", "3: coordinate 'z1.2' is not a number"),
    ("1\nx\nC 0 nan 0\n", "3: coordinate 'nan' is not a finite number"),
    ("1\nx\nC 0 0\n", "3: atom line 'C 0 0' has 3 fields (expected 'symbol x y z')"),
    (XYZ_OK + "two\nx\nH 0 0 0\n", "6: atom count line 'two' is not a positive integer"),
    (XYZ_OK + "1\nx\nH 0 0 0 \nH 1 1 1\n", "9: atom count line 'H 1 1 1' is not a positive integer"),
]


def _sdf_record(name: str = "water", atoms: list[str] | None = None, bonds: list[str] | None = None, tail: str = "M  END\n$$$$\n") -> str:
    atoms = atoms if atoms is not None else [
        "    0.0000    0.0000    0.1173 O   0  0  0  0  0  0  0  0  0  0  0  0",
        "    0.0000    0.7572   -0.4692 H   0  0  0  0  0  0  0  0  0  0  0  0",
        "    0.0000   -0.7572   -0.4692 H   0  0  0  0  0  0  0  0  0  0  0  0",
    ]
    bonds = bonds if bonds is not None else ["  1  2  1  0", "  1  3  1  0"]
    counts = f"{len(atoms):3d}{len(bonds):3d}  0  0  0  0  0  0  0  0999 V2000"
    return "\n".join([name, "     test          3D", "", counts, *atoms, *bonds]) + "\n" + tail


GOOD_ATOM = "    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0"
MALFORMED_SDF = [
    (_sdf_record().replace("  3  2  0", "  x  2  0"), "4: counts line 'x  2  0  0  0  0  0  0  0  0999 V2000' does not start with atom and bond counts (expected 'aaabbb ... V2000')"),
    (_sdf_record(atoms=[GOOD_ATOM.replace(" C ", " Q ")], bonds=[]), "5: unknown element symbol 'Q' (expected an element symbol such as C, N, O)"),
    (_sdf_record(atoms=[GOOD_ATOM.replace("    0.0000 C", "    0.00z0 C")], bonds=[]), "5: coordinate '0.00z0' is not a number"),
    (_sdf_record(atoms=["    0.0000    0.0000"], bonds=[]), "5: atom line '0.0000    0.0000' is too short (expected x, y, z in columns 1-30 and the symbol in 32-34)"),
    (_sdf_record(bonds=["  1  9  1  0", "  1  3  1  0"]), "8: bond line refers to atom 9 (expected atoms 1 to 3)"),
    (_sdf_record(bonds=["  1  2  1  0", "  1  3  9  0"]), "9: bond type 9 is not a V2000 bond type (expected 1 to 8)"),
    (_sdf_record(bonds=["  1  2  1  0", "  a  3  1  0"]), "9: bond line 'a  3  1  0' does not start with two atom numbers and a bond type"),
    (_sdf_record(bonds=["  1  2  1  0", "  1  3  1  0"], tail="$$$$\n"), "10: record ends before 'M  END' (expected the end of the connection table)"),
    (_sdf_record(tail=""), "10: file ends before 'M  END' (expected the end of the connection table)"),
    (_sdf_record(tail="M  END\nnot a header\n$$$$\n"), "11: line 'not a header' is not a data header (expected '> <name>' or '$$$$')"),
    ("\n".join(_sdf_record().splitlines()[:6]) + "\n", "7: file ends after 2 of 3 atom lines"),
    ("name\n\n$$$$\n", "3: record ends before its counts line (expected 3 header lines, then 'aaabbb ... V2000')"),
    ("name\n\n\n  0  0  0  0  0  0  0  0  0  0999 V3000\nM  END\n", "4: V3000 connection tables are not supported (expected V2000)"),
    (_sdf_record() + _sdf_record(atoms=[GOOD_ATOM.replace(" C ", " Xx")], bonds=[]), "16: unknown element symbol 'Xx' (expected an element symbol such as C, N, O)"),
]


@pytest.mark.parametrize(
    "suffix, text, expected",
    [(".xyz", *case) for case in MALFORMED_XYZ] + [(".sdf", *case) for case in MALFORMED_SDF],
)
def test_malformed_file_names_file_and_line(tmp_path, suffix, text, expected):
    path = tmp_path / f"data{suffix}"
    path.write_text(text)
    with pytest.raises(MoleculeFileError) as err:
        read_molecules(path)
    assert str(err.value) == f"{path}:{expected}"
    assert "\n" not in str(err.value)


def test_the_good_sdf_record_used_above_is_readable(tmp_path):
    path = tmp_path / "data.sdf"
    path.write_text(_sdf_record() + _sdf_record(name="again"))
    assert [m.title for m in read_molecules(path)] == ["water", "again"]


@pytest.mark.parametrize("name, content, expected", [
    ("empty.xyz", b"", "file is empty (expected at least one molecule)"),
    ("blank.sdf", b"\n  \n\n", "file is empty (expected at least one molecule)"),
    ("missing.xyz", None, "no such file"),
    ("latin1.xyz", b"1\ncaf\xe9\nH 0 0 0\n", None),
    ("m.pdb", b"HETATM", "unknown file type '.pdb' (expected one of .xyz, .sdf, .mol)"),
])
def test_unreadable_files(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MoleculeFileError) as err:
        read_molecules(path)
    message = expected if expected is not None else "not UTF-8 text (expected a text file)"
    line = ":2" if name == "latin1.xyz" else ""
    assert str(err.value) == f"{path}{line}: {message}"


def test_a_directory_is_a_clear_error(tmp_path):
    (tmp_path / "d.xyz").mkdir()
    with pytest.raises(MoleculeFileError, match=r"d\.xyz: is a directory"):
        read_molecules(tmp_path / "d.xyz")


# ----------------------------------------------------------------------------------------------
# Atomic writes


def _fails_after_first():
    yield WATER
    raise RuntimeError("interrupted")


@pytest.mark.parametrize("writer, name", [(write_xyz, "out.xyz"), (write_sdf, "out.sdf")])
def test_interrupted_write_leaves_no_file(tmp_path, writer, name):
    with pytest.raises(RuntimeError, match="interrupted"):
        writer(tmp_path / name, _fails_after_first())
    assert os.listdir(tmp_path) == []


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.xyz"
    write_xyz(path, [ETHENE])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="interrupted"):
        write_xyz(path, _fails_after_first())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.xyz"]


def test_new_files_get_ordinary_permissions(tmp_path):
    write_xyz(tmp_path / "out.xyz", [WATER])
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.xyz").stat().st_mode & 0o777 == 0o666 & ~umask
