"""The one in-memory representation of a 3D molecule shared by I/O, metrics and models."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Molecule:
    """A molecule as element symbols and Cartesian coordinates.

    Attributes:
        symbols: element symbols, one per atom (``["C", "O", "H", ...]``).
        positions: coordinates in Å, shape ``(n_atoms, 3)``.
        title: free text (XYZ comment line / SDF name line).
        properties: scalar properties written to / read from SDF data fields.
    """

    symbols: list[str]
    positions: np.ndarray
    title: str = ""
    properties: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        if len(self.symbols) != len(self.positions):
            raise ValueError(
                f"molecule has {len(self.symbols)} symbols but {len(self.positions)} positions"
            )

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)
