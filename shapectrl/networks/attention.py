"""Induced-set attention (the ISAB of Set Transformer, Lee et al. 2019): global mixing of a cloud at
a cost linear in N.

``M`` learned inducing vectors attend to the N points (a permutation-invariant summary, ``(B, M, H)``),
then every point attends to that summary. Both attentions cost O(N·M·H) instead of the O(N²·H) of
full self-attention, so a few dozen inducing points keep a block about as cheap as a per-point MLP.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _CrossAttention(nn.Module):
    """Multi-head attention of queries ``(B, Q, H)`` over keys/values ``(B, K, H)`` -> ``(B, Q, H)``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} attention heads")
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        k, v = self.key_value(keys).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self._split(self.query(queries)), self._split(k), self._split(v))
        return self.out(out.transpose(1, 2).flatten(2))


class InducedSetAttention(nn.Module):
    """Pre-norm ISAB: ``x (B, N, H) -> x + attend(x, summary(x))``, permutation-equivariant in the points.

    Args:
        width: H. n_inducing: M learned inducing vectors. heads: attention heads (divide H).
    """

    def __init__(self, width: int, n_inducing: int = 32, heads: int = 4):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(n_inducing, width) * width**-0.5)
        self.norm_points = nn.LayerNorm(width)
        self.norm_summary = nn.LayerNorm(width)
        self.gather = _CrossAttention(width, heads)
        self.summary_mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.scatter = _CrossAttention(width, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.norm_points(x)
        summary = self.inducing.expand(x.shape[0], -1, -1)
        summary = summary + self.gather(summary, a)  # (B, M, H)
        summary = summary + self.summary_mlp(summary)
        return x + self.scatter(a, self.norm_summary(summary))
