"""Property predictors: a regressor of the six QM9 properties with its label normalisation and a
calibrated Gaussian likelihood.

Training minimises the L1 error of normalised labels ``(y − mean)/MAD`` averaged over the properties
(EGNN's QM9 recipe; one multi-property head instead of six networks). The likelihood used as a reward
is ``p(y | x) = N(y; f(x), s²)`` per property, with ``s`` fitted on validation residuals by
:func:`fit_calibration`: the half-width of the central 68.27 % of ``|y − f(x)|``, so that the
one-sigma interval has its nominal coverage. (The residuals are heavier-tailed than a Gaussian, so the
root-mean-square residual would make the interval cover ~80 % and flatten the reward.)
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from common.exports import Exportable, tensor_shape, typed, typed_field
from common.rewards import GaussianLogLikelihood
from molctrl.data.qm9 import Setting, get_setting
from molctrl.molecule import Molecule
from molctrl.regressors import E3Regressor, EGNNRegressor, with_column

PROPERTIES = ("alpha", "gap", "homo", "lumo", "mu", "Cv")
ARCHITECTURES = ("egnn", "e3nn")
ONE_SIGMA = 0.6826894921370859  # P(|z| < 1) for a standard normal


@dataclass
class PredictorConfig:
    """Architecture: ``egnn`` (EDM's evaluator, 7 × 128) or ``e3nn`` (4 blocks, 32 scalar channels);
    ``dipole_head``: μ as the length of a dipole vector (:mod:`molctrl.regressors`)."""

    setting: str = "qm9-noh"
    arch: str = "egnn"
    properties: tuple[str, ...] = PROPERTIES
    hidden: int = 0  # 0: the architecture's default
    n_layers: int = 0
    extra: dict = field(default_factory=dict)
    dipole_head: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r} (expected one of {', '.join(ARCHITECTURES)})")
        unknown = [p for p in self.properties if p not in PROPERTIES]
        if unknown or not self.properties:
            raise ValueError(f"unknown properties {unknown} (expected some of {', '.join(PROPERTIES)})")
        self.properties = tuple(self.properties)
        if self.dipole_head and "mu" not in self.properties:
            raise ValueError("dipole_head: the predictor does not predict mu")
        default_hidden, default_layers = (128, 7) if self.arch == "egnn" else (32, 4)
        self.hidden = self.hidden or default_hidden
        self.n_layers = self.n_layers or default_layers


def fit_calibration(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-property ``s``: the 68.27 % quantile of ``|labels − predictions|``, both ``(M, P)`` -> ``(P,)``."""
    return np.quantile(np.abs(labels - predictions), ONE_SIGMA, axis=0)


class PropertyPredictor(Exportable, nn.Module):
    """``f(x)``: molecules (one-hot types, positions, mask) -> properties in their units, ``(B, P)``.

    Args:
        config: architecture and properties. label_mean, label_scale: ``(P,)`` normalisation of the
            labels (training mean and mean absolute deviation).
    """

    kind = "molctrl.predictor"
    calibration_dims = 1  # the calibration is (P,)

    def __init__(self, config: PredictorConfig, label_mean: Sequence[float], label_scale: Sequence[float],
                 extra_features: int = 0):
        super().__init__()
        self.config = config
        self.setting: Setting = get_setting(config.setting)
        n_in, n_out = len(self.setting.atom_decoder) + extra_features, len(config.properties)
        self.dipole_column = config.properties.index("mu") if config.dipole_head else None
        regressor = EGNNRegressor if config.arch == "egnn" else E3Regressor
        self.net = regressor(n_in, n_out, config.hidden, config.n_layers, dipole_column=self.dipole_column,
                             **config.extra)
        self.register_buffer("label_mean", torch.as_tensor(label_mean, dtype=torch.float32))
        self.register_buffer("label_scale", torch.as_tensor(label_scale, dtype=torch.float32))
        self.calibration: torch.Tensor | None = None  # (P,) likelihood scale s; set by fit_calibration

    @property
    def properties(self) -> tuple[str, ...]:
        return self.config.properties

    def normalised(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The network's output ``(B, P)`` in normalised label units ``(y − mean)/MAD``; the dipole head's
        column, which comes in debye, is normalised here."""
        out = self.net(features, positions, mask)
        k = self.dipole_column
        if k is None:
            return out
        return with_column(out, k, (out[:, k] - self.label_mean[k]) / self.label_scale[k])

    def regress(self, one_hot: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``one_hot (B, N, F)`` (soft one-hot allowed), ``positions (B, N, 3)``, ``mask (B, N)`` -> ``(B, P)``."""
        return self.normalised(one_hot, positions, mask) * self.label_scale + self.label_mean

    def encode(self, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``types (B, N)`` with −1 for padding -> one-hot ``(B, N, F)``, mask ``(B, N)``."""
        mask = types >= 0
        one_hot = nn.functional.one_hot(types.clamp(min=0).long(), len(self.setting.atom_decoder))
        return one_hot.to(self.label_mean.dtype) * mask.unsqueeze(-1), mask

    def forward(self, types: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss: mean L1 error of normalised labels, ``labels (B, P)``."""
        one_hot, mask = self.encode(types)
        normalised = (labels - self.label_mean) / self.label_scale
        return (self.normalised(one_hot, positions, mask) - normalised).abs().mean()

    def padded_batches(self, types: np.ndarray, positions: np.ndarray,
                       batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Padded arrays in batches on the model's device, each trimmed to its largest molecule:
        ``types (b, n)`` (int64, −1 for padding) and ``positions (b, n, 3)``."""
        device = self.label_mean.device
        for i in range(0, len(types), batch_size):
            t = torch.as_tensor(types[i : i + batch_size], device=device).long()
            n = max(1, int((t >= 0).sum(1).max()))
            yield t[:, :n], torch.as_tensor(positions[i : i + batch_size, :n], device=device,
                                            dtype=self.label_mean.dtype)

    @torch.no_grad()
    def predict_arrays(self, types: np.ndarray, positions: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Padded arrays ``types (M, N)``, ``positions (M, N, 3)`` -> predictions ``(M, P)`` (float64)."""
        out = []
        for t, pos in self.padded_batches(types, positions, batch_size):
            one_hot, mask = self.encode(t)
            out.append(self.regress(one_hot, pos, mask).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.properties)))

    @torch.no_grad()
    def calibrate(self, types: np.ndarray, positions: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
        """Fit the likelihood scale s on held-out molecules (sets ``calibration``); returns the MAE and s
        per property, for the training log. ``seed`` is used by noise-aware models only."""
        predictions = self.predict_arrays(types, positions)
        scale = fit_calibration(predictions, labels)
        self.calibration = torch.tensor(scale, dtype=torch.float32)
        mae = np.abs(predictions - labels).mean(0)
        return {"mae": dict(zip(self.properties, mae.round(5).tolist())),
                "calibration_s": dict(zip(self.properties, scale.round(5).tolist()))}

    def predict_molecules(self, molecules: Sequence[Molecule], batch_size: int = 512) -> np.ndarray:
        """Predictions ``(M, P)`` for molecules of any size; hydrogens are dropped for a heavy-atom model.

        Raises ValueError for an element outside the model's alphabet, or for a molecule without atoms.
        """
        encoder = self.setting.atom_encoder
        kept = []
        for k, mol in enumerate(molecules):
            idx = [i for i, s in enumerate(mol.symbols) if not (self.setting.remove_h and s == "H")]
            bad = sorted({mol.symbols[i] for i in idx} - set(encoder))
            name = f"molecule {k + 1}" + (f" ({mol.title})" if mol.title else "")
            if bad:
                raise ValueError(f"{name}: element(s) {', '.join(bad)} not in the {self.setting.name} alphabet "
                                 f"{', '.join(self.setting.atom_decoder)}")
            if not idx:
                raise ValueError(f"{name}: no atoms for the {self.setting.name} model")
            if not self.setting.remove_h and "H" not in mol.symbols:
                raise ValueError(f"{name}: the {self.setting.name} model needs explicit hydrogens")
            kept.append(([encoder[mol.symbols[i]] for i in idx], np.asarray(mol.positions)[idx]))
        n_max = max((len(t) for t, _ in kept), default=1)
        types = np.full((len(kept), n_max), -1, dtype=np.int64)
        positions = np.zeros((len(kept), n_max, 3))
        for k, (t, pos) in enumerate(kept):
            types[k, : len(t)], positions[k, : len(t)] = t, pos
        return self.predict_arrays(types, positions, batch_size)

    @classmethod
    def _metadata_args(cls, tree: dict) -> dict:
        """Constructor arguments beyond config and label statistics, read from a weights tree."""
        return {}

    # -- shipping --------------------------------------------------------------------------------

    def export(self) -> dict:
        """What a weights file holds: config, weights and (if fitted) the likelihood calibration."""
        calibration = None if self.calibration is None else self.calibration.tolist()
        return {"kind": self.kind, "config": asdict(self.config), "state_dict": self.state_dict(),
                "calibration": calibration}

    @classmethod
    def from_metadata(cls, tree: dict) -> PropertyPredictor:
        """The untrained network a weights tree describes, with its calibration (see :mod:`common.exports`)."""
        config = typed(PredictorConfig, typed_field(tree, "config"), "config")
        n = len(config.properties)
        model = cls(config, torch.zeros(tensor_shape(tree, "label_mean")), torch.ones(tensor_shape(tree, "label_scale")),
                    **cls._metadata_args(tree))
        calibration = typed_field(tree, "calibration", list[float] | list[list[float]] | None, None)
        if calibration is not None:
            model.calibration = torch.tensor(calibration, dtype=torch.float32)
            if model.calibration.dim() != cls.calibration_dims or model.calibration.shape[-1] != n:
                raise ValueError(f"calibration: expected {'a row' if cls.calibration_dims == 1 else 'rows'} of {n} "
                                 f"scales (one per property), got shape {tuple(model.calibration.shape)}")
        return model



TAIL = 4.0  # Huber threshold of the likelihood rewards, in calibrated standard deviations


class StateRegressor(nn.Module):
    """The predictor read on diffusion states ``x = [positions, one_hot·type_scale] (B, N, 3+F)`` -> ``(B, P)``."""

    def __init__(self, predictor: PropertyPredictor, type_scale: float):
        super().__init__()
        self.predictor, self.type_scale = predictor, type_scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        one_hot = x[..., 3:] / self.type_scale * mask.unsqueeze(-1)
        return self.predictor.regress(one_hot, x[..., :3], mask)


def likelihood_reward(predictor: PropertyPredictor, properties: Sequence[str], type_scale: float,
                      tail: float | None = TAIL) -> GaussianLogLikelihood:
    """``log p(y | x) = Σ_k log N(y_k; f_k(x), s_k²)`` over ``properties``, on states, with Huber tails
    beyond ``tail``·s (the residuals are heavy-tailed, and a broken sample of the 10-step training
    chains scored −7·10⁵ under the pure Gaussian, whose gradient then wrecked a CTRL step).

    Targets ``y (B, 6)`` hold one column per property of :data:`PROPERTIES` (the reward reads its own),
    so rewards of separately trained predictors add up on the same ``y`` and ``y_mask``.
    """
    if predictor.calibration is None:
        raise ValueError("the predictor has no likelihood calibration (train it with 'molctrl train predictor')")
    missing = [p for p in properties if p not in predictor.properties]
    if missing:
        raise ValueError(f"the predictor does not predict {', '.join(missing)} (it has {', '.join(predictor.properties)})")
    columns = [predictor.properties.index(p) for p in properties]
    return GaussianLogLikelihood(StateRegressor(predictor, type_scale), predictor.calibration[columns], columns,
                                 target_columns=[PROPERTIES.index(p) for p in properties], tail=tail)


class AtomCountPredictor:
    """The ``#Atoms`` reference: a property predicted from the atom count alone, as the median label of
    the training molecules of that size (the L1-optimal function of N; the overall median for sizes not
    seen in training)."""

    def __init__(self, n_atoms: np.ndarray, labels: np.ndarray):
        """``n_atoms (M,)``, ``labels (M, P)``."""
        labels = labels.reshape(len(labels), -1)
        self.table = np.tile(np.median(labels, 0), (int(n_atoms.max()) + 2, 1))  # last row: larger sizes
        for n in np.unique(n_atoms):
            self.table[n] = np.median(labels[n_atoms == n], 0)

    def __call__(self, n_atoms: np.ndarray) -> np.ndarray:
        """``(M,)`` -> ``(M, P)``."""
        return self.table[np.minimum(n_atoms, len(self.table) - 1)]
