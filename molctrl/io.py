"""Reading and writing molecules: multi-molecule XYZ and SDF/MOL (V2000).

Readers check every line and report the first problem as a :class:`MoleculeFileError` whose message
is one line, ``<path>:<line>: <what is wrong> (<what was expected>)``. Writers are atomic: they write
a temporary file next to the target and move it into place only when everything was written.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from rdkit import Chem

from common.runtime import atomic_open, read_bytes
from molctrl.bonds import bond_order_matrix, rdkit_molecule
from molctrl.molecule import Molecule

XYZ_SUFFIXES = (".xyz",)
SDF_SUFFIXES = (".sdf", ".mol")

_PERIODIC_TABLE = Chem.GetPeriodicTable()
ELEMENT_SYMBOLS: frozenset[str] = frozenset(_PERIODIC_TABLE.GetElementSymbol(z) for z in range(1, 119))


class MoleculeFileError(ValueError):
    """A molecule file that cannot be read; the message names the file and line."""


class _LineError(Exception):
    """A problem found on one line, turned into a :class:`MoleculeFileError` by the reader."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


# ----------------------------------------------------------------------------------------------
# Reading


def read_molecules(path: str | os.PathLike) -> list[Molecule]:
    """All molecules of an ``.xyz``, ``.sdf`` or ``.mol`` file, in file order.

    Raises:
        MoleculeFileError: the file is missing, unreadable, of an unknown kind, or malformed.
    """
    path = Path(path)
    parse = _parser_for(path)
    lines = _read_lines(path)
    if not any(line.strip() for line in lines):
        raise MoleculeFileError(f"{path}: file is empty (expected at least one molecule)")
    try:
        return parse(lines)
    except _LineError as err:
        raise MoleculeFileError(f"{path}:{err.line}: {err.message}") from None


def _parser_for(path: Path) -> Callable[[list[str]], list[Molecule]]:
    suffix = path.suffix.lower()
    if suffix in XYZ_SUFFIXES:
        return parse_xyz
    if suffix in SDF_SUFFIXES:
        return parse_sdf
    raise MoleculeFileError(
        f"{path}: unknown file type '{path.suffix}' (expected one of .xyz, .sdf, .mol)"
    )


def _read_lines(path: Path) -> list[str]:
    data = read_bytes(path, MoleculeFileError, "a molecule file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise MoleculeFileError(f"{path}:{line}: not UTF-8 text (expected a text file)") from None
    return text.splitlines()


def _element(token: str, line: int) -> str:
    if token in ELEMENT_SYMBOLS:
        return token
    hint = f"; did you mean '{token.capitalize()}'?" if token.capitalize() in ELEMENT_SYMBOLS else ""
    expected = f"expected an element symbol such as C, N, O{hint}"
    raise _LineError(line, f"unknown element symbol '{token}' ({expected})")


def _coordinate(token: str, line: int) -> float:
    try:
        value = float(token)
    except ValueError:
        raise _LineError(line, f"coordinate '{token}' is not a number") from None
    if not math.isfinite(value):
        raise _LineError(line, f"coordinate '{token}' is not a finite number")
    return value


def parse_xyz(lines: list[str]) -> list[Molecule]:
    """Molecules from the lines of a multi-molecule XYZ file (blank lines between records allowed).

    Each record is an atom-count line, a comment line (the title) and ``symbol x y z`` lines; extra
    columns after ``z`` are ignored.
    """
    molecules = []
    k = 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        count = _xyz_count(lines[k], k + 1)
        if k + 1 >= len(lines):
            raise _LineError(k + 2, "file ends after the atom count line (expected a comment line)")
        title = lines[k + 1]
        atom_lines = lines[k + 2 : k + 2 + count]
        if len(atom_lines) < count:
            raise _LineError(len(lines) + 1, f"file ends after {len(atom_lines)} of {count} atom lines")
        symbols, positions = [], []
        for offset, text in enumerate(atom_lines):
            symbol, xyz = _xyz_atom(text, k + 3 + offset)
            symbols.append(symbol)
            positions.append(xyz)
        molecules.append(Molecule(symbols, np.array(positions), title))
        k += 2 + count
    return molecules


def _xyz_count(text: str, line: int) -> int:
    token = text.strip()
    try:
        count = int(token)
    except ValueError:
        count = 0
    if count <= 0:
        raise _LineError(line, f"atom count line '{token}' is not a positive integer")
    return count


def _xyz_atom(text: str, line: int) -> tuple[str, list[float]]:
    fields = text.split()
    if len(fields) < 4:
        raise _LineError(line, f"atom line '{text.strip()}' has {len(fields)} fields (expected 'symbol x y z')")
    return _element(fields[0], line), [_coordinate(f, line) for f in fields[1:4]]


def parse_sdf(lines: list[str]) -> list[Molecule]:
    """Molecules from the lines of an SDF or MOL file (V2000 connection tables).

    The name line becomes the title and the data fields the properties (numbers as floats). Bonds
    and charges in the file are checked for form but not kept: a :class:`Molecule` is atoms only.
    """
    molecules = []
    k = 0
    while k < len(lines):
        if not any(text.strip() for text in lines[k:]):
            break
        molecule, k = _sdf_record(lines, k)
        molecules.append(molecule)
    return molecules


def _sdf_record(lines: list[str], start: int) -> tuple[Molecule, int]:
    """One SDF record starting at ``lines[start]``; returns it and the index after its ``$$$$``."""
    counts_at = start + 3
    for k in range(start, counts_at + 1):
        _sdf_line(lines, k, "before its counts line (expected 3 header lines, then 'aaabbb ... V2000')")
    n_atoms, n_bonds = _sdf_counts(lines[counts_at], counts_at + 1)
    k = counts_at + 1
    symbols, positions = [], []
    for i in range(n_atoms):
        symbol, xyz = _sdf_atom(_sdf_line(lines, k + i, f"after {i} of {n_atoms} atom lines"), k + i + 1)
        symbols.append(symbol)
        positions.append(xyz)
    k += n_atoms
    for i in range(n_bonds):
        _sdf_bond(_sdf_line(lines, k + i, f"after {i} of {n_bonds} bond lines"), k + i + 1, n_atoms)
    k += n_bonds
    while not _sdf_line(lines, k, "before 'M  END' (expected the end of the connection table)").startswith("M  END"):
        k += 1
    properties, k = _sdf_data(lines, k + 1)
    return Molecule(symbols, np.array(positions), lines[start].strip(), properties), k


def _sdf_line(lines: list[str], k: int, where: str) -> str:
    """``lines[k]``, or an error if the file or the record (``$$$$``) ends there."""
    if k >= len(lines):
        raise _LineError(k + 1, f"file ends {where}")
    if lines[k].startswith("$$$$"):
        raise _LineError(k + 1, f"record ends {where}")
    return lines[k]


def _sdf_counts(text: str, line: int) -> tuple[int, int]:
    if "V3000" in text:
        raise _LineError(line, "V3000 connection tables are not supported (expected V2000)")
    try:
        n_atoms, n_bonds = int(text[0:3]), int(text[3:6])
    except ValueError:
        raise _LineError(
            line, f"counts line '{text.strip()}' does not start with atom and bond counts (expected 'aaabbb ... V2000')"
        ) from None
    if n_atoms <= 0 or n_bonds < 0:
        raise _LineError(line, f"counts line has {n_atoms} atoms and {n_bonds} bonds (expected at least one atom)")
    return n_atoms, n_bonds


def _sdf_atom(text: str, line: int) -> tuple[str, list[float]]:
    if len(text) < 34:
        expected = "expected x, y, z in columns 1-30 and the symbol in 32-34"
        raise _LineError(line, f"atom line '{text.strip()}' is too short ({expected})")
    xyz = [_coordinate(text[a:b].strip(), line) for a, b in ((0, 10), (10, 20), (20, 30))]
    return _element(text[31:34].strip(), line), xyz


def _sdf_bond(text: str, line: int, n_atoms: int) -> None:
    try:
        first, second, order = int(text[0:3]), int(text[3:6]), int(text[6:9])
    except ValueError:
        problem = f"bond line '{text.strip()}' does not start with two atom numbers and a bond type"
        raise _LineError(line, problem) from None
    for atom in (first, second):
        if not 1 <= atom <= n_atoms:
            raise _LineError(line, f"bond line refers to atom {atom} (expected atoms 1 to {n_atoms})")
    if not 1 <= order <= 8:
        raise _LineError(line, f"bond type {order} is not a V2000 bond type (expected 1 to 8)")


def _sdf_data(lines: list[str], k: int) -> tuple[dict[str, float | str], int]:
    """Data fields after ``M  END`` up to and including ``$$$$`` (or the end of the file)."""
    properties: dict[str, float | str] = {}
    while k < len(lines) and not lines[k].startswith("$$$$"):
        header = lines[k]
        k += 1
        if not header.strip():
            continue
        if not header.startswith(">"):
            raise _LineError(k, f"line '{header.strip()}' is not a data header (expected '> <name>' or '$$$$')")
        name = _data_name(header)
        values = []
        while k < len(lines) and lines[k].strip() and not lines[k].startswith("$$$$"):
            values.append(lines[k])
            k += 1
        properties[name] = _data_value("\n".join(values))
    return properties, k + 1


def _data_name(header: str) -> str:
    start = header.find("<")
    end = header.find(">", start + 1)
    if 0 < start < end:
        return header[start + 1 : end]
    return header[1:].strip()


def _data_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


# ----------------------------------------------------------------------------------------------
# Writing


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def format_xyz(molecule: Molecule) -> str:
    """One XYZ record; coordinates are written exactly (shortest round-trip form)."""
    atoms = zip(molecule.symbols, molecule.positions.tolist())
    rows = [f"{s:<2} {x:>20} {y:>20} {z:>20}" for s, (x, y, z) in atoms]
    return "\n".join([str(molecule.n_atoms), _one_line(molecule.title), *rows]) + "\n"


def write_xyz(path: str | os.PathLike, molecules: Iterable[Molecule]) -> None:
    """Write molecules to a multi-molecule XYZ file (comment line = title), atomically."""
    with atomic_open(path) as handle:
        for molecule in molecules:
            handle.write(format_xyz(molecule))


def to_rdkit(molecule: Molecule, with_bonds: bool = True) -> Chem.Mol:
    """An RDKit molecule with a 3D conformer and, optionally, bonds from :func:`bond_order_matrix`."""
    n = molecule.n_atoms
    if with_bonds:
        orders = bond_order_matrix(molecule.symbols, molecule.positions)
    else:
        orders = np.zeros((n, n), dtype=np.int64)
    mol = rdkit_molecule(molecule.symbols, orders)
    conformer = Chem.Conformer(n)
    conformer.Set3D(True)
    for i, xyz in enumerate(molecule.positions.tolist()):
        conformer.SetAtomPosition(i, xyz)
    mol.AddConformer(conformer, assignId=True)
    mol.SetProp("_Name", _one_line(molecule.title))
    return mol.GetMol()


def format_sdf(molecule: Molecule) -> str:
    """One SDF record: V2000 connection table, then the properties as data fields.

    Bonds are re-derived from the geometry; if RDKit cannot take them, the atoms are written alone.
    """
    try:
        block = Chem.MolToMolBlock(to_rdkit(molecule), kekulize=False)
    except (RuntimeError, ValueError):
        block = Chem.MolToMolBlock(to_rdkit(molecule, with_bonds=False), kekulize=False)
    fields = [f"> <{name}>\n{_one_line(str(value))}\n\n" for name, value in molecule.properties.items()]
    return block + "".join(fields) + "$$$$\n"


def write_sdf(path: str | os.PathLike, molecules: Iterable[Molecule]) -> None:
    """Write molecules to an SDF file (coordinates to 1e-4 Å, as V2000 allows), atomically."""
    with atomic_open(path) as handle:
        for molecule in molecules:
            handle.write(format_sdf(molecule))


def write_molecules(path: str | os.PathLike, molecules: Iterable[Molecule]) -> None:
    """Write molecules as XYZ or SDF, chosen by the suffix of ``path`` (``.xyz``, ``.sdf``, ``.mol``)."""
    suffix = Path(path).suffix.lower()
    if suffix in XYZ_SUFFIXES:
        write_xyz(path, molecules)
    elif suffix in SDF_SUFFIXES:
        write_sdf(path, molecules)
    else:
        raise MoleculeFileError(
            f"{path}: cannot write '{Path(path).suffix}' files (expected a path ending in .xyz, .sdf or .mol)"
        )
