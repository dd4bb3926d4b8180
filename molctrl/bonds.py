"""Bond orders from inter-atomic distances, following the rules of EDM (Hoogeboom et al., 2022).

A pair of atoms at distance ``d`` (in pm) gets

* order 1 if ``d < single + 10``,
* order 2 if, in addition, the pair has a tabulated double-bond length and ``d < double + 5``,
* order 3 if, in addition, the pair has a tabulated triple-bond length and ``d < triple + 3``,

and order 0 otherwise. Pairs without a tabulated single-bond length (and elements outside the tables)
never bond. An atom is *stable* when its bond orders sum to one of its allowed valences.

The tables below are EDM's (``qm9/bond_analyze.py`` of ``ehoogeboom/e3_diffusion_for_molecules``),
written here once per unordered pair. EDM lists the C=S double bond (160 pm) only under carbon; its
molecule builder looks pairs up in the order H, B, C, N, O, F, Al, Si, P, S, Cl, As, Br, I, Hg, Bi,
so C=S is found whichever atom comes first, which is what the symmetric table here does.

Distances are computed as EDM computed them: from float32 coordinates, in float32, scaled by 100 in
float32, and compared with a strict ``<``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem

#: Elements known to the tables, in EDM's GEOM atom-decoder order.
ELEMENTS: tuple[str, ...] = (
    "H", "B", "C", "N", "O", "F", "Al", "Si", "P", "S", "Cl", "As", "Br", "I", "Hg", "Bi",
)

#: Typical single-bond lengths in pm, one entry per unordered pair.
SINGLE_BOND_PM: dict[tuple[str, str], int] = {
    ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
    ("H", "B"): 119, ("H", "Si"): 148, ("H", "P"): 144, ("H", "As"): 152, ("H", "S"): 134,
    ("H", "Cl"): 127, ("H", "Br"): 141, ("H", "I"): 161,
    ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135, ("C", "Si"): 185,
    ("C", "P"): 184, ("C", "S"): 182, ("C", "Cl"): 177, ("C", "Br"): 194, ("C", "I"): 214,
    ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136, ("N", "Cl"): 175, ("N", "Br"): 214,
    ("N", "S"): 168, ("N", "I"): 222, ("N", "P"): 177,
    ("O", "O"): 148, ("O", "F"): 142, ("O", "Br"): 172, ("O", "S"): 151, ("O", "P"): 163,
    ("O", "Si"): 163, ("O", "Cl"): 164, ("O", "I"): 194,
    ("F", "F"): 142, ("F", "S"): 158, ("F", "Si"): 160, ("F", "Cl"): 166, ("F", "Br"): 178,
    ("F", "P"): 156, ("F", "I"): 187,
    ("B", "Cl"): 175,
    ("Si", "Si"): 233, ("Si", "S"): 200, ("Si", "Cl"): 202, ("Si", "Br"): 215, ("Si", "I"): 243,
    ("Cl", "Cl"): 199, ("Cl", "P"): 203, ("Cl", "S"): 207, ("Cl", "Br"): 214,
    ("S", "S"): 204, ("S", "Br"): 225, ("S", "P"): 210, ("S", "I"): 234,
    ("Br", "Br"): 228, ("Br", "P"): 222,
    ("P", "P"): 221,
    ("I", "I"): 266,
}

#: Typical double-bond lengths in pm.
DOUBLE_BOND_PM: dict[tuple[str, str], int] = {
    ("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("C", "S"): 160,
    ("N", "N"): 125, ("N", "O"): 121, ("O", "O"): 121, ("O", "P"): 150, ("P", "S"): 186,
}

#: Typical triple-bond lengths in pm.
TRIPLE_BOND_PM: dict[tuple[str, str], int] = {
    ("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110,
}

#: Margins in pm added to the single, double and triple lengths.
MARGINS_PM: tuple[int, int, int] = (10, 5, 3)

#: Allowed valences (sums of bond orders) per element.
ALLOWED_VALENCES: dict[str, tuple[int, ...]] = {
    "H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "B": (3,), "Al": (3,), "Si": (4,),
    "P": (3, 5), "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,), "Hg": (1, 2),
    "Bi": (3, 5),
}

_INDEX = {symbol: i for i, symbol in enumerate(ELEMENTS)}
_UNKNOWN = len(ELEMENTS)  # row/column for elements outside the tables: never bonded
_BOND_TYPES = (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)


def _threshold_matrix(lengths: dict[tuple[str, str], int], margin: int) -> np.ndarray:
    """``(E + 1, E + 1)`` float32 matrix of ``length + margin``; ``-inf`` where no length is tabulated."""
    table = np.full((_UNKNOWN + 1, _UNKNOWN + 1), -np.inf, dtype=np.float32)
    for (a, b), length in lengths.items():
        table[_INDEX[a], _INDEX[b]] = table[_INDEX[b], _INDEX[a]] = length + margin
    return table


_THRESHOLDS = tuple(
    _threshold_matrix(lengths, margin)
    for lengths, margin in zip((SINGLE_BOND_PM, DOUBLE_BOND_PM, TRIPLE_BOND_PM), MARGINS_PM)
)


def element_indices(symbols: Sequence[str]) -> np.ndarray:
    """Index of each symbol in :data:`ELEMENTS`, ``len(ELEMENTS)`` for elements outside the tables."""
    return np.fromiter((_INDEX.get(s, _UNKNOWN) for s in symbols), dtype=np.intp, count=len(symbols))


def distances_pm(positions: np.ndarray) -> np.ndarray:
    """``(n, n)`` float32 inter-atomic distances in pm from coordinates in Å, as EDM computed them."""
    pos = np.asarray(positions, dtype=np.float32)
    diff = pos[:, None, :] - pos[None, :, :]
    squared = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    return np.sqrt(squared) * np.float32(100)


def bond_order_matrix(symbols: Sequence[str], positions: np.ndarray) -> np.ndarray:
    """Symmetric ``(n, n)`` int matrix of bond orders 0-3 with a zero diagonal.

    Args:
        symbols: element symbols, one per atom.
        positions: coordinates in Å, shape ``(n, 3)``.
    """
    idx = element_indices(symbols)
    pair = (idx[:, None], idx[None, :])
    d = distances_pm(positions)
    single, double, triple = (d < table[pair] for table in _THRESHOLDS)
    orders = single * (1 + double * (1 + triple.astype(np.int64)))
    np.fill_diagonal(orders, 0)
    return orders


def _allowed_table() -> np.ndarray:
    """``(E + 1, V + 1)`` bool: ``[e, v]`` is true iff ``v`` is an allowed valence of element ``e``."""
    table = np.zeros((_UNKNOWN + 1, max(map(max, ALLOWED_VALENCES.values())) + 1), dtype=bool)
    for symbol, valences in ALLOWED_VALENCES.items():
        table[_INDEX[symbol], list(valences)] = True
    return table


_ALLOWED = _allowed_table()
_MAX_VALENCE = np.array([max(ALLOWED_VALENCES.get(s, (-1,))) for s in ELEMENTS] + [-1], dtype=np.int64)


def valence_bounds(symbols: Sequence[str]) -> np.ndarray:
    """Largest allowed valence of each atom; ``-1`` for elements without one (never stable)."""
    return _MAX_VALENCE[element_indices(symbols)]


def has_allowed_valence(symbols: Sequence[str], valences: np.ndarray) -> np.ndarray:
    """Bool per atom: its bond-order sum is one of the element's allowed valences (EDM's stability)."""
    valences = np.asarray(valences)
    in_table = (valences >= 0) & (valences < _ALLOWED.shape[1])
    return in_table & _ALLOWED[element_indices(symbols), np.where(in_table, valences, 0)]


def rdkit_molecule(symbols: Sequence[str], orders: np.ndarray) -> Chem.RWMol:
    """An unsanitised RDKit molecule with the given atoms and single/double/triple bonds.

    Bonds are added as EDM's builder added them: for each atom ``i``, to each ``j < i``.
    """
    mol = Chem.RWMol()
    for symbol in symbols:
        mol.AddAtom(Chem.Atom(symbol))
    rows, cols = np.nonzero(np.tril(orders, -1))
    for i, j in zip(rows.tolist(), cols.tolist()):
        mol.AddBond(i, j, _BOND_TYPES[orders[i, j]])
    return mol
