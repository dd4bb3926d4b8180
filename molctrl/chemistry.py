"""RDKit rewards (QED, logP, SA score) of molecules built from generated 3D structures.

A molecule is built as EDM's validity test builds it (bond orders from distances, RDKit
sanitisation, largest fragment, :func:`molctrl.metrics.largest_fragment`), then its explicit
hydrogens are removed, so that a molecule scores the same with or without hydrogens in its
structure. Empty molecules, non-finite coordinates and molecules that fail sanitisation are invalid:
their scores are NaN, and :class:`ChemistryReward` gives them a fixed ``invalid_value``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import torch
from rdkit import Chem, RDConfig
from rdkit.Chem import QED, Crippen
from rdkit.rdBase import BlockLogs
from torch import Tensor

from common.rewards import Reward
from molctrl.bonds import bond_order_matrix
from molctrl.metrics import largest_fragment
from molctrl.molecule import Molecule

SCORE_NAMES: tuple[str, ...] = ("qed", "logp", "sa")

#: Reward of an invalid molecule per score, below any valid molecule's: QED ∈ [0, 1], so 0;
#: Crippen logP of QM9-sized molecules lies within about ±5, so −10; SA ∈ [1, 10], reward −SA ≥ −10.
INVALID_QED = 0.0
INVALID_LOGP = -10.0
INVALID_SA = -10.0
INVALID_VALUES: dict[str, float] = {"qed": INVALID_QED, "logp": INVALID_LOGP, "sa": INVALID_SA}


@functools.cache
def _sascorer() -> ModuleType:
    """RDKit's Contrib ``sascorer`` (Ertl & Schuffenhauer, 2009), loaded once from its file."""
    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    spec = importlib.util.spec_from_file_location("sascorer", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"RDKit's SA_Score sascorer not found at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sa_score(mol: Chem.Mol) -> float:
    return _sascorer().calculateScore(mol)


_SCORERS: dict[str, Callable[[Chem.Mol], float]] = {"qed": QED.qed, "logp": Crippen.MolLogP, "sa": _sa_score}


def _check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in _SCORERS]
    if unknown:
        raise ValueError(f"unknown chemistry score {unknown[0]!r} (expected one of {', '.join(SCORE_NAMES)})")


def scoring_molecule(molecule: Molecule) -> Chem.Mol | None:
    """The sanitised largest fragment without explicit hydrogens, or ``None`` if the molecule is invalid."""
    if molecule.n_atoms == 0 or not np.isfinite(molecule.positions).all():
        return None
    mol = largest_fragment(molecule.symbols, bond_order_matrix(molecule.symbols, molecule.positions))
    if mol is None:
        return None
    mol = Chem.RemoveHs(mol)
    return mol if mol.GetNumAtoms() > 0 else None


def chemistry_scores(molecules: Sequence[Molecule], names: Sequence[str] = SCORE_NAMES) -> dict[str, np.ndarray]:
    """Scores of each molecule, ``name -> (M,)`` float arrays, NaN for invalid molecules.

    ``qed``: RDKit's QED (0-1, higher is more drug-like); ``logp``: Crippen logP; ``sa``: synthetic
    accessibility score (1 easy - 10 hard).
    """
    _check_names(names)
    scores = {name: np.full(len(molecules), np.nan) for name in names}
    with BlockLogs():  # RDKit would log every failed sanitisation
        for k, molecule in enumerate(molecules):
            mol = scoring_molecule(molecule)
            if mol is not None:
                for name in names:
                    scores[name][k] = _SCORERS[name](mol)
    return scores


class ChemistryReward(Reward):
    """A chemistry score of decoded molecules, higher is better: QED, logP, or −SA.

    Args:
        name: ``"qed"``, ``"logp"`` or ``"sa"``.
        decode: states to molecules, ``decode(x (B, N, C), mask (B, N)) -> B molecules``
            (e.g. :meth:`molctrl.prior.MoleculeDiffusion.decode`).
        invalid_value: reward of an invalid molecule (default :data:`INVALID_VALUES`).
    """

    differentiable = False

    def __init__(self, name: str, decode: Callable[[Tensor, Tensor], list[Molecule]], invalid_value: float | None = None):
        super().__init__()
        _check_names([name])
        self.name = name
        self.decode = decode
        self.sign = -1.0 if name == "sa" else 1.0
        self.invalid_value = INVALID_VALUES[name] if invalid_value is None else float(invalid_value)

    @torch.no_grad()
    def forward(self, x: Tensor, mask: Tensor, y: Tensor | None = None, y_mask: Tensor | None = None) -> Tensor:
        """``(B,)`` rewards on x's device and dtype; targets are ignored."""
        scores = chemistry_scores(self.decode(x, mask), [self.name])[self.name]
        rewards = np.where(np.isnan(scores), self.invalid_value, self.sign * scores)
        return torch.as_tensor(rewards, dtype=x.dtype, device=x.device)
