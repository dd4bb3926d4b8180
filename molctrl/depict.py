"""2D depictions of generated molecules as one PNG grid (RDKit's Cairo drawer; no image library needed)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

from rdkit import Chem
from rdkit.Chem import rdDepictor
from rdkit.Chem.Draw import rdMolDraw2D

from common.runtime import atomic_path
from molctrl.chemistry import scoring_molecule
from molctrl.molecule import Molecule


def grid_png(molecules: Sequence[Molecule], legends: Sequence[str], path: str | os.PathLike, per_row: int = 4,
             panel: int = 260) -> None:
    """Draw each molecule (its sanitised largest fragment; an empty panel marked "invalid" if it has none)
    with its legend (RDKit's legend font has no Greek letters or arrows: keep legends ASCII)."""
    mols, legends = [], list(legends)
    for k, molecule in enumerate(molecules):
        mol = scoring_molecule(molecule)
        if mol is None:
            legends[k] = f"invalid; {legends[k]}"
        mol = Chem.Mol() if mol is None else Chem.Mol(mol)
        rdDepictor.Compute2DCoords(mol)
        mols.append(mol)
    rows = max(1, math.ceil(len(mols) / per_row))
    cols = min(per_row, max(1, len(mols)))
    drawer = rdMolDraw2D.MolDraw2DCairo(cols * panel, rows * panel, panel, panel)
    drawer.drawOptions().legendFontSize = 16
    drawer.DrawMolecules(mols, legends=legends)
    drawer.FinishDrawing()
    with atomic_path(path) as tmp:
        tmp.write_bytes(drawer.GetDrawingText())
