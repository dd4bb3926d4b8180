"""A noise-aware property predictor f(z_t, t) for classifier guidance.

The same networks as :mod:`molctrl.predictor`, read on noised diffusion states: node features are the
state's type channels (divided by the type scale) and t = step/T; positions are the noised positions.
Training draws t uniformly on {0, …, T} and z_t ~ q(z_t | x) under the prior's own diffusion. The
likelihood log p_t(y | z_t) = Σ_k log N(y_k; f_k(z_t, t), s_k(t)²) uses a scale calibrated per bin of t
(:data:`N_BINS` equal bins; the same 68.27 % quantile rule as the clean predictor).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch

from common.diffusion import GaussianDiffusion
from common.exports import typed, typed_field
from common.rewards import gaussian_log_density
from common.schedules import NoiseSchedule
from common.spaces import PointSetSpace
from molctrl.predictor import PredictorConfig, PropertyPredictor, fit_calibration
from molctrl.prior import PriorConfig

N_BINS = 10


class NoisyPropertyPredictor(PropertyPredictor):
    """``f(z_t, t)``: properties ``(B, P)`` from states ``z (B, N, 3+F)`` at times ``t = step/T (B,)``.

    Args: as :class:`PropertyPredictor`, plus the prior's configuration (schedule and type scale).
    """

    kind = "molctrl.noisy_predictor"
    calibration_dims = 2  # the calibration is (N_BINS, P): one row per noise-level bin

    def __init__(self, config: PredictorConfig, label_mean: Sequence[float], label_scale: Sequence[float],
                 prior: PriorConfig):
        super().__init__(config, label_mean, label_scale, extra_features=1)
        self.prior_config = prior
        self.diffusion = GaussianDiffusion(NoiseSchedule(prior.schedule, prior.n_steps, prior.precision),
                                           PointSetSpace(centered_dims=3))

    def regress_state(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``z (B, N, 3+F)``, ``t (B,)`` in [0, 1], ``mask (B, N)`` -> ``(B, P)`` in label units."""
        m = mask.unsqueeze(-1).to(z.dtype)
        features = torch.cat([z[..., 3:] / self.prior_config.type_scale, t.view(-1, 1, 1).expand(-1, z.shape[1], 1)],
                             dim=-1) * m
        return self.normalised(features, z[..., :3], mask) * self.label_scale + self.label_mean

    def noised(self, types: torch.Tensor, positions: torch.Tensor, t: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean molecules -> ``(z_t, mask)`` at integer steps ``t (B,)``."""
        one_hot, mask = self.encode(types)
        x = torch.cat([positions.to(one_hot.dtype), one_hot * self.prior_config.type_scale], dim=-1)
        x = self.diffusion.space.project(x, mask)
        return self.diffusion.add_noise(x, t, mask, generator)[0], mask

    def forward(self, types: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss at random noise levels: mean L1 error of normalised labels."""
        t = torch.randint(0, self.diffusion.n_steps + 1, (len(types),), device=types.device)
        z, mask = self.noised(types, positions, t)
        predicted = self.regress_state(z, t.to(z.dtype) / self.diffusion.n_steps, mask)
        return ((predicted - labels) / self.label_scale).abs().mean()

    @torch.no_grad()
    def calibrate(self, types: np.ndarray, positions: np.ndarray, labels: np.ndarray, seed: int = 0,
                  batch_size: int = 512) -> dict:
        """Fit s(t) per bin on held-out molecules, each noised once at its bin's centre (sets
        ``calibration`` ``(N_BINS, P)``); returns the MAE per property and bin, for the training log."""
        g = torch.Generator().manual_seed(seed)
        scales, maes = [], []
        for b in range(N_BINS):
            step = round((b + 0.5) / N_BINS * self.diffusion.n_steps)
            out = []
            for t, pos in self.padded_batches(types, positions, batch_size):
                steps = torch.full((len(t),), step, device=t.device)
                z, mask = self.noised(t, pos, steps, g)
                out.append(self.regress_state(z, steps.to(z.dtype) / self.diffusion.n_steps, mask).double().cpu())
            predictions = torch.cat(out).numpy()
            scales.append(fit_calibration(predictions, labels))
            maes.append(np.abs(predictions - labels).mean(0))
        self.calibration = torch.tensor(np.stack(scales), dtype=torch.float32)
        mae = np.stack(maes)
        return {"mae_per_t_bin": {p: mae[:, k].round(4).tolist() for k, p in enumerate(self.properties)}}

    def log_likelihood(self, properties: Sequence[str], y: torch.Tensor,
                       y_mask: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """``log p_t(y | z_t)`` as ``(z, t, mask) -> (B,)`` for :class:`common.guidance.GuidedDenoiser`;
        ``y, y_mask (B, 6)`` hold one column per property of :data:`molctrl.predictor.PROPERTIES`."""
        from molctrl.predictor import PROPERTIES

        if self.calibration is None:
            raise ValueError("the noise-aware predictor has no calibration")
        columns = [self.properties.index(p) for p in properties]
        targets = [PROPERTIES.index(p) for p in properties]

        def log_p(z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            bins = (t * N_BINS).long().clamp(0, N_BINS - 1)
            s = self.calibration.to(z)[bins][:, columns]
            f = self.regress_state(z, t, mask)[:, columns]
            return gaussian_log_density(y[: len(z), targets].to(z), f, s, y_mask[: len(z), targets].to(z.device))

        return log_p

    def export(self) -> dict:
        return super().export() | {"prior": asdict(self.prior_config)}

    @classmethod
    def _metadata_args(cls, tree: dict) -> dict:
        return {"prior": typed(PriorConfig, typed_field(tree, "prior"), "prior")}
