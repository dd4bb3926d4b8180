"""Property-conditioned generation: targets -> atom counts -> conditioned or guided sampling -> molecules.

Atom counts follow the targets: N is drawn among the ``k`` conditioning-split (Db) molecules whose
conditioned labels are nearest to the target (in units of each label's mean absolute deviation), an
estimate of p(N | c); unconditioned requests draw N from the split's histogram.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.diffusion import ANCESTRAL, GaussianDiffusion, Solver
from common.guidance import (
    GuidedDenoiser,
    classifier_free,
    reconstruction_likelihood,
    window_shares,
)
from common.rewards import GaussianLogLikelihood
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import PROPERTY_UNITS
from molctrl.molecule import Molecule
from molctrl.noisy_predictor import NoisyPropertyPredictor
from molctrl.predictor import PROPERTIES
from molctrl.prior import MoleculeDiffusion


@dataclass
class Guidance:
    """Sampling-time guidance of a prior: reconstruction guidance with a clean-data likelihood (the
    predictor read on x̂₀, widened by the spread of x around it, :func:`common.guidance.reconstruction_likelihood`),
    or classifier guidance with a noise-aware predictor."""

    scale: float = 1.0
    reward: GaussianLogLikelihood | None = None  # reconstruction
    noisy: NoisyPropertyPredictor | None = None  # classifier
    window: tuple[int, int] | None = None  # guide only the diffusion steps lo < t ≤ hi (None: all of them)

    @property
    def mode(self) -> str:
        return "classifier" if self.noisy is not None else "reconstruction"

    def log_likelihood(self, y: torch.Tensor, y_mask: torch.Tensor, diffusion: GaussianDiffusion):
        """``(z or x̂₀, t, mask) -> (B,)`` for one batch of targets."""
        if self.noisy is not None:
            return self.noisy.log_likelihood(self.noisy.properties, y, y_mask)
        return reconstruction_likelihood(self.reward, diffusion, y, y_mask)


def parse_targets(texts: Sequence[str]) -> dict[str, float]:
    """``["alpha=80", "gap=6500"]`` -> ``{"alpha": 80.0, "gap": 6500.0}``, with one-line errors."""
    targets = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"target {text!r}: expected NAME=VALUE, e.g. alpha=80")
        if name not in PROPERTIES:
            raise ValueError(f"target {text!r}: unknown property {name!r} (expected one of {', '.join(PROPERTIES)})")
        try:
            targets[name] = float(value)
        except ValueError:
            raise ValueError(f"target {text!r}: {value!r} is not a number") from None
    return targets


def check_targets(targets: dict[str, float], conditions: PropertyConditions, margin: float = 0.1) -> None:
    """``ValueError`` naming the range for a target outside the conditioning labels' span widened by
    ``margin`` of it on each side: the reward and the models have seen nothing there."""
    for name, value in targets.items():
        column = conditions.labels[:, PROPERTIES.index(name)]
        lo, hi = float(column.min()), float(column.max())
        pad = margin * (hi - lo)
        if not lo - pad <= value <= hi + pad:
            raise ValueError(f"{name}={value:g} is outside the labels the models were trained on "
                             f"({lo:.4g} to {hi:.4g} {PROPERTY_UNITS[name]}, give or take {margin:.0%} of that span)")


def target_tensors(targets: dict[str, float], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``y (n, 6)`` (NaN where not conditioned) and ``y_mask (n, 6)``."""
    row = torch.tensor([targets.get(p, float("nan")) for p in PROPERTIES])
    return row.expand(n, -1).clone(), torch.isfinite(row).expand(n, -1).clone()


def atom_counts(conditions: PropertyConditions, y: torch.Tensor, y_mask: torch.Tensor, k: int = 200,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n,)`` atom counts for targets ``y (n, 6)``: sizes of random molecules among the k nearest."""
    n = len(y)
    pick = torch.randint(k, (n,), generator=generator)
    if not y_mask.any():
        return conditions.n_atoms[torch.randint(len(conditions.n_atoms), (n,), generator=generator)]
    out = torch.empty(n, dtype=torch.long)
    scaled = conditions.labels / conditions.scale
    for i in range(n):
        m = y_mask[i]
        distance = ((scaled[:, m] - y[i, m] / conditions.scale[m]) ** 2).sum(1)
        nearest = torch.topk(distance, min(k, len(distance)), largest=False).indices
        out[i] = conditions.n_atoms[nearest[pick[i] % len(nearest)]]
    return out


def generate(model: MoleculeDiffusion, conditions: PropertyConditions, y: torch.Tensor, y_mask: torch.Tensor,
             n_sampling_steps: int | None = None, generator: torch.Generator | None = None,
             guidance: Guidance | None = None, batch_size: int = 256,
             n_atoms: torch.Tensor | None = None, guidance_scale: float = 1.0,
             solver: Solver = ANCESTRAL) -> list[Molecule]:
    """Molecules for targets ``y (n, 6)`` / ``y_mask (n, 6)``.

    A conditioned model (``config.cond_dim > 0``) sees the encoded targets, with classifier-free
    guidance when ``guidance_scale`` w ≠ 1 (:class:`common.guidance.ConditionScaled`); an
    unconditioned prior with ``guidance`` is steered by it. Atom counts ``n_atoms (n,)`` default to
    :func:`atom_counts`. ``solver``: the steps' grid and order.
    """
    if guidance_scale != 1.0 and not model.config.cond_dim:
        raise ValueError("classifier-free guidance needs a conditioned model")
    if n_atoms is None:
        n_atoms = atom_counts(conditions, y, y_mask, generator=generator)
    molecules: list[Molecule] = []
    device = model.n_atoms_hist.device
    for start in range(0, len(y), batch_size):
        rows = slice(start, start + batch_size)
        yb, mb = y[rows], y_mask[rows]
        cond = conditions.encode(yb, mb).to(device) if model.config.cond_dim else None
        if guidance is not None:
            log_likelihood = guidance.log_likelihood(yb.to(device), mb.to(device), model.diffusion)
            denoiser = GuidedDenoiser(model.denoiser, model.diffusion, log_likelihood, guidance.scale, guidance.mode,
                                      window=window_shares(guidance.window, model.diffusion.n_steps))
        else:
            denoiser = classifier_free(model.denoiser, guidance_scale)
        molecules += model.sample(len(yb), n_sampling_steps, generator, n_atoms=n_atoms[rows], cond=cond,
                                  denoiser=denoiser, solver=solver)
    return molecules
