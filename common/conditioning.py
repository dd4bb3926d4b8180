"""How a prior becomes a conditioned model, for both domains: the copy that starts as the prior, its
optimiser groups, and the clipped standard scores in which targets reach the network.

A conditioned denoiser adds ``W_c·c`` (gated by the domain) to its per-set context; with ``W_c = 0``
it is the prior exactly, ε_θ(z, t, c) = ε_pre(z, t) for every condition c, so fine-tuning starts at
the prior and the KL of CTRL starts at zero.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Self

import torch
from torch import nn

from common.training import condition_parameter_groups

CLIP = 5.0  # standard scores of targets are clipped to ±CLIP


def standard_scores(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """clip((y − mean)/scale, ±CLIP), with 0 where y is NaN (an unconditioned column): outlying targets
    (μ reaches 19 MADs in QM9's Db) would otherwise drive the condition embedding far from what training saw."""
    return torch.nan_to_num((y - mean.to(y)) / scale.to(y)).clamp(-CLIP, CLIP)


class Conditionable:
    """Mixin of a diffusion model with a ``config`` dataclass (``cond_dim``: 0 for a prior) and a
    denoiser with ``cond_embed`` (``None`` or ``nn.Linear(cond_dim, ·, bias=False)``). The class gives
    :meth:`reconfigured`, the same model's untrained network under another config."""

    def reconfigured(self, config) -> Self:
        raise NotImplementedError

    def with_condition(self, cond_dim: int, **config_changes) -> Self:
        """A conditioned copy that starts as this model (zero condition embedding, every other weight
        copied); ``config_changes`` set further config fields of the copy (e.g. the condition's gate)."""
        if self.config.cond_dim:
            raise ValueError("the model is already conditioned")
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be positive, got {cond_dim}")
        model = self.reconfigured(replace(self.config, cond_dim=cond_dim, **config_changes))
        nn.init.zeros_(model.denoiser.cond_embed.weight)
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        if unexpected or len(missing) != 1 or not missing[0].endswith("cond_embed.weight"):
            raise RuntimeError(f"conditioned copy: missing {missing}, unexpected {unexpected}")
        return model.to(next(self.parameters()).device)

    def parameter_groups(self, cond_lr_scale: float = 1.0, backbone: bool = True) -> list[dict]:
        """See :func:`common.training.condition_parameter_groups`."""
        embed = self.denoiser.cond_embed
        return condition_parameter_groups(self, None if embed is None else embed.weight, cond_lr_scale, backbone)
