"""EDM's sample-quality metrics: atom and molecule stability, validity, uniqueness and novelty.

Definitions (Hoogeboom et al., 2022, as implemented in their code):

* **atom stability** — stable atoms / all atoms of the set, where an atom is stable iff the sum of
  its bond orders (:func:`molctrl.bonds.bond_order_matrix`) is one of its allowed valences;
* **molecule stability** — fraction of molecules whose atoms are all stable;
* **validity** — fraction of molecules that RDKit sanitises once built from the atoms and the
  bond-order matrix, and whose largest fragment then gives a SMILES;
* **uniqueness** — distinct valid SMILES / valid molecules;
* **novelty** — distinct valid SMILES not among the training SMILES / distinct valid SMILES.

Stability needs explicit hydrogens. For sets without any hydrogen (the heavy-atom setting) it is
reported under the relaxed definition "no atom's bond-order sum exceeds its largest allowed valence";
the report says which definition was used.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from common.runtime import atomic_open
from molctrl.bonds import (
    bond_order_matrix,
    has_allowed_valence,
    rdkit_molecule,
    valence_bounds,
)
from molctrl.molecule import Molecule

EXACT_VALENCE = "edm_exact_valence"
VALENCE_NOT_EXCEEDED = "valence_not_exceeded"
SUMMARY_KEYS = ("n", "atom_stability", "mol_stability", "validity", "uniqueness", "novelty")
TRAIN_SMILES_VERSION = 1


@dataclass(frozen=True)
class MoleculeMetrics:
    """Per-molecule results; ``smiles`` is empty for invalid molecules."""

    index: int
    n_atoms: int
    n_stable_atoms: int
    mol_stable: bool
    valid: bool
    smiles: str


ROW_FIELDS = tuple(f.name for f in fields(MoleculeMetrics))


@dataclass
class MetricsReport:
    """Summary (keys :data:`SUMMARY_KEYS` plus ``stability_definition``) and one row per molecule."""

    summary: dict[str, float | int | str | None]
    rows: list[MoleculeMetrics]

    def write_csv(self, path: str | os.PathLike, extra: dict[str, Sequence] | None = None) -> None:
        """Write the per-molecule rows as CSV (columns :data:`ROW_FIELDS`, then ``extra``'s, one value per
        molecule each), atomically."""
        extra = extra or {}
        with atomic_open(path) as handle:
            writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS + tuple(extra), lineterminator="\n")
            writer.writeheader()
            writer.writerows(asdict(row) | {name: column[k] for name, column in extra.items()}
                             for k, row in enumerate(self.rows))


def stability_definition(molecules: Sequence[Molecule]) -> str:
    """:data:`EXACT_VALENCE` if any molecule has a hydrogen, else :data:`VALENCE_NOT_EXCEEDED`."""
    has_h = any("H" in m.symbols for m in molecules)
    return EXACT_VALENCE if has_h else VALENCE_NOT_EXCEEDED


def reference_setting(molecules: Sequence[Molecule]) -> str:
    """The QM9 setting to compare with: ``qm9`` if any molecule has a hydrogen, else ``qm9-noh``."""
    return "qm9" if stability_definition(molecules) == EXACT_VALENCE else "qm9-noh"


def stable_atoms(symbols: Sequence[str], orders: np.ndarray, definition: str = EXACT_VALENCE) -> np.ndarray:
    """Bool per atom: stable under ``definition`` given the bond-order matrix."""
    valences = orders.sum(axis=1)
    if definition == EXACT_VALENCE:
        return has_allowed_valence(symbols, valences)
    if definition == VALENCE_NOT_EXCEEDED:
        return valences <= valence_bounds(symbols)
    expected = f"expected {EXACT_VALENCE!r} or {VALENCE_NOT_EXCEEDED!r}"
    raise ValueError(f"unknown stability definition {definition!r} ({expected})")


def _sanitized(mol: Chem.Mol) -> bool:
    try:
        with BlockLogs():  # RDKit would log every failed sanitisation
            Chem.SanitizeMol(mol)
    except ValueError:  # RDKit's sanitisation errors derive from ValueError
        return False
    return True


def largest_fragment(symbols: Sequence[str], orders: np.ndarray) -> Chem.Mol | None:
    """EDM's validity test: the sanitised largest fragment, or ``None`` if the molecule is invalid.

    The molecule is built from the atoms and bond orders and sanitised; its largest fragment (the
    first one with the most atoms) is sanitised again.
    """
    mol = rdkit_molecule(symbols, orders)
    if not _sanitized(mol):
        return None
    if len(Chem.GetMolFrags(mol)) <= 1:
        return mol
    largest = max(Chem.GetMolFrags(mol, asMols=True), key=lambda frag: frag.GetNumAtoms())
    return largest if _sanitized(largest) else None


def largest_fragment_smiles(symbols: Sequence[str], orders: np.ndarray) -> str | None:
    """Canonical SMILES of :func:`largest_fragment`, or ``None`` if the molecule is invalid."""
    mol = largest_fragment(symbols, orders)
    return None if mol is None else Chem.MolToSmiles(mol)


def molecule_smiles(symbols: Sequence[str], orders: np.ndarray) -> str | None:
    """SMILES of the whole sanitised molecule, or ``None``; how EDM turned training molecules into SMILES."""
    mol = rdkit_molecule(symbols, orders)
    return Chem.MolToSmiles(mol) if _sanitized(mol) else None


def evaluate_molecule(index: int, molecule: Molecule, definition: str = EXACT_VALENCE) -> MoleculeMetrics:
    """Stability and validity of one molecule."""
    orders = bond_order_matrix(molecule.symbols, molecule.positions)
    n_stable = int(stable_atoms(molecule.symbols, orders, definition).sum())
    smiles = largest_fragment_smiles(molecule.symbols, orders)
    return MoleculeMetrics(
        index=index,
        n_atoms=molecule.n_atoms,
        n_stable_atoms=n_stable,
        mol_stable=n_stable == molecule.n_atoms,
        valid=smiles is not None,
        smiles=smiles or "",
    )


def _fraction(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def summarize(
    rows: Sequence[MoleculeMetrics], reference_smiles: set[str] | None, definition: str
) -> dict[str, float | int | str | None]:
    """Set-level metrics from per-molecule rows; ``novelty`` is ``None`` without reference SMILES.

    uniqueness = |distinct valid SMILES| / |valid|;
    novelty = |distinct valid SMILES not in reference| / |distinct valid SMILES|.
    Empty denominators give 0.0.
    """
    valid = [row.smiles for row in rows if row.valid]
    unique = set(valid)
    novel = None if reference_smiles is None else _fraction(len(unique - reference_smiles), len(unique))
    return {
        "n": len(rows),
        "atom_stability": _fraction(sum(r.n_stable_atoms for r in rows), sum(r.n_atoms for r in rows)),
        "mol_stability": _fraction(sum(r.mol_stable for r in rows), len(rows)),
        "validity": _fraction(len(valid), len(rows)),
        "uniqueness": _fraction(len(unique), len(valid)),
        "novelty": novel,
        "stability_definition": definition,
    }


def evaluate_molecules(molecules: Sequence[Molecule], reference_smiles: set[str] | None = None) -> MetricsReport:
    """EDM's metrics over a set of molecules.

    Args:
        molecules: the set; the stability definition follows from whether any of them has hydrogens
            (see :func:`stability_definition`).
        reference_smiles: training SMILES for novelty (see :func:`train_smiles`); ``None`` skips it.
    """
    definition = stability_definition(molecules)
    rows = [evaluate_molecule(i, m, definition) for i, m in enumerate(molecules)]
    return MetricsReport(summarize(rows, reference_smiles, definition), rows)


def train_smiles(setting: str) -> set[str]:
    """SMILES of the QM9 training molecules of a setting (``qm9`` or ``qm9-noh``), as EDM made them.

    Each molecule is built from its bond-order matrix and, if it sanitises, written as the SMILES of
    the whole molecule (EDM did not take the largest fragment here, so the few training molecules
    that fall apart into fragments count as novel when generated). Computed once (10-20 s) and
    cached as text in the QM9 cache directory.
    """
    from molctrl.data.qm9 import cache_dir, load_split

    path = cache_dir() / f"train_smiles_{setting}_v{TRAIN_SMILES_VERSION}.txt"
    if path.exists():
        return set(path.read_text(encoding="utf-8").split())
    with BlockLogs():
        smiles = {
            s
            for m in load_split(setting, "train").molecules()
            if (s := molecule_smiles(m.symbols, bond_order_matrix(m.symbols, m.positions))) is not None
        }
    with atomic_open(path) as handle:
        handle.writelines(f"{s}\n" for s in sorted(smiles))
    return smiles
