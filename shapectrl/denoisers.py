"""Point-cloud ε-networks ε_θ(z_t, t, c) for shape diffusion: a point-voxel network, a set transformer
and a PointNet reference.

All take the noisy cloud ``z (B, N, 3)`` (every cloud of a batch has N points, any N), the time
``t = step/T (B,)`` and, when conditioned, ``cond (B, C)``; they return ε̂ ``(B, N, 3)`` and are
permutation-equivariant in the points. The state space is plain R^{N×3} (no centring: shapes keep
their position in the data set's global frame, see :mod:`shapectrl.data.normalisation`).

Shared design (:class:`PointDenoiser`): Fourier features of the coordinates are embedded to H
features per point, and the per-cloud context (time MLP + the time-gated ``cond_embed``, see
:class:`~shapectrl.networks.ContextEmbedding`) is added to them and, through a linear map of its own,
again at the start of every block. A block mixes information across the cloud in one of three ways:

- ``pvd`` (:class:`PointVoxelBlock`): per-point MLP + a coarse voxel branch (features averaged into an
  R³ grid, two 3×3×3 convolutions, trilinear interpolation back) + a max-pooled global feature. The
  grid gives every point its neighbourhood at O(R³·C²) cost independent of N. The grid and the pool
  read at most ``grid_points`` points (the training size): which cells are empty, and so the grid,
  changes with the number of points averaged, and a maximum grows with the number of points it is
  taken over, so a network trained on 512 points would be off its training distribution at 2,048
  (:class:`PointVoxelDenoiser`). Optionally each block also takes, per point, a max over its nearest of
  those points (:class:`LocalMax`): the neighbourhood at the scale of the points' spacing, which the
  coarse grid averages away.
- ``transformer`` (:class:`SetTransformerBlock`): induced-set attention over M inducing vectors and a
  feed-forward layer, O(N·M·H) per block.
- ``pointnet`` (:class:`PointNetBlock`): per-point MLP + a max-pooled global feature only; the
  design whose cost motivated the other two (the benchmark times it at 6 × 256 for comparison).

Every design processes the clouds of a batch independently, so on the CPU a batch runs in slices of
about :data:`CPU_SLICE_POINTS` points: its (B, N, H) activations are tens of MB at 2,048 points, and
fresh allocations that size cost a page fault per page on every call (half the time of an unsliced
step at batch 32 × 2,048). Precision: with ``compute_dtype = torch.bfloat16``
(:func:`common.runtime.set_precision`) the network runs under autocast in bfloat16 and returns ε̂ in the
dtype of z; parameters stay float32.

Cost on the CPU is the design constraint (a PointNet of 6 × 256 features with a max-pooled feature
per block took 2.25 s per training step at batch 32 and 1,024 points); ``benchmarks/shapes_speed.py``
measures these candidates.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from common.runtime import in_batch_slices
from shapectrl.networks import (
    ContextEmbedding,
    InducedSetAttention,
    VoxelGrid,
    Voxelisation,
    devoxelise,
    fourier_features,
    gather_neighbours,
    knn_indices,
    neighbourhood_max,
    voxelise,
)

ARCHITECTURES = ("pvd", "transformer", "pointnet")

#: Points of one CPU slice of a batch, by the dtype of the matrix products (``benchmarks.shapes_speed
#: --slices``, 32 clouds of 2,048 points: 4,096 fastest in float32, 0.66 s against 1.40 s unsliced; 8,192 in
#: bfloat16, 0.43 s against 0.55 s; at 512 points every size from 2,048 to 8,192 is within 5 % of the best).
CPU_SLICE_POINTS = {torch.float32: 2**12, torch.bfloat16: 2**13}


class LocalMax(nn.Module):
    """Each point's neighbourhood among the anchors: features ``a (B, K, H)`` at ``anchors (B, K, 3)``, read
    at points ``z (B, N, 3)`` whose neighbours are ``index (B, N, k)`` (into K) -> ``(B, N, C)``:

        m_i = max_j [W·a_j + U·(z_j − z_i)] = max_j (W·a_j + U·z_j) − U·z_i,

    a linear EdgeConv whose max over U·(z_j − z_i) is the support function of the neighbours' offsets
    in C directions (where the local surface lies). It needs one linear map per point and no
    ``(B, N, k, C)`` tensor (:func:`~shapectrl.networks.neighbourhood_max`). The offsets are taken in
    float32: in bfloat16, U·z_j − U·z_i would lose the few hundredths that separate neighbours.
    """

    def __init__(self, width: int, channels: int):
        super().__init__()
        self.features = nn.Linear(width, channels)
        self.offset = nn.Linear(3, channels, bias=False)

    def forward(self, a: torch.Tensor, anchors: torch.Tensor, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        w = self.features(a).float()
        with torch.autocast(z.device.type, enabled=False):
            u = self.offset.weight.float()
            q = w + F.linear(anchors.float(), u)
            if torch.is_grad_enabled() and q.requires_grad:
                m = neighbourhood_max(q, index)
            else:  # sampling: the max over float16 copies (about 1e-3 off); float32's gather dominated the step
                m = gather_neighbours(q.half(), index).amax(2).float()
            return m - F.linear(z.float(), u)


class PointVoxelBlock(nn.Module):
    """Residual block ``h (B, N, H) -> (B, N, H)``: point MLP + voxel convolution + global max pool, and
    with ``local_channels`` a :class:`LocalMax` over each point's nearest anchors (its output map
    zero-initialised, so a block grown from one without it starts as that block)."""

    def __init__(self, width: int, voxel_channels: int, local_channels: int = 0):
        super().__init__()
        self.context = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.to_voxel = nn.Linear(width, voxel_channels)
        groups = next(g for g in (8, 4, 2, 1) if voxel_channels % g == 0)
        self.conv = nn.Sequential(
            nn.Conv3d(voxel_channels, voxel_channels, 3, padding=1), nn.GroupNorm(groups, voxel_channels), nn.SiLU(),
            nn.Conv3d(voxel_channels, voxel_channels, 3, padding=1),
        )
        self.from_voxel = nn.Linear(voxel_channels, width, bias=False)
        self.point = nn.Linear(width, width)
        self.pooled = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width)
        self.local = LocalMax(width, local_channels) if local_channels else None
        self.from_local = nn.Linear(local_channels, width, bias=False) if local_channels else None
        if self.from_local is not None:
            nn.init.zeros_(self.from_local.weight)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor, cells: Voxelisation, points: Voxelisation,
                k: int, z: torch.Tensor | None = None, neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """``h (B, N, H)``, ``ctx (B, H)``, the cells of the first k ≤ N points (the anchors: the grid
        averages them and the pool takes their maximum) and of all N (where the grid is read); with a
        local branch also the points ``z (B, N, 3)`` and each one's nearest anchors ``neighbours (B, N, k')``
        -> ``(B, N, H)``."""
        a = F.silu(self.norm(h + self.context(ctx).unsqueeze(1)))
        grid = self.conv(voxelise(self.to_voxel(a[:, :k]), cells))
        u = self.point(a) + self.from_voxel(devoxelise(grid, points)) + self.pooled(a[:, :k].amax(1)).unsqueeze(1)
        if self.local is not None:
            u = u + self.from_local(F.silu(self.local(a[:, :k], z[:, :k], z, neighbours)))
        return h + self.out(F.silu(u))


class PointNetBlock(nn.Module):
    """Residual block ``h (B, N, H) -> (B, N, H)``: per-point MLP + a max-pooled global feature."""

    def __init__(self, width: int):
        super().__init__()
        self.context = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.point = nn.Linear(width, width)
        self.pooled = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """``h (B, N, H)``, ``ctx (B, H)`` -> ``(B, N, H)``."""
        a = F.silu(self.norm(h + self.context(ctx).unsqueeze(1)))
        return h + self.out(F.silu(self.point(a) + self.pooled(a.amax(1)).unsqueeze(1)))


class SetTransformerBlock(nn.Module):
    """Residual block ``h (B, N, H) -> (B, N, H)``: induced-set attention, then a feed-forward layer."""

    def __init__(self, width: int, n_inducing: int, heads: int, ff_ratio: int = 2):
        super().__init__()
        self.context = nn.Linear(width, width)
        self.attention = InducedSetAttention(width, n_inducing, heads)
        self.ff = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, ff_ratio * width), nn.SiLU(),
                                nn.Linear(ff_ratio * width, width))

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """``h (B, N, H)``, ``ctx (B, H)`` -> ``(B, N, H)``."""
        h = self.attention(h + self.context(ctx).unsqueeze(1))
        return h + self.ff(h)


class PointDenoiser(nn.Module):
    """ε_θ(z, t, c) with a stack of blocks; subclasses define ``blocks`` and :meth:`trunk`.

    Args:
        width: H, features per point. cond_dim: condition width (0: unconditional).
        n_frequencies: Fourier octaves of the input coordinates.
    """

    def __init__(self, width: int, cond_dim: int = 0, n_frequencies: int = 4):
        super().__init__()
        self.width, self.n_frequencies = width, n_frequencies
        self.context = ContextEmbedding(width, cond_dim)
        self.embed = nn.Linear(3 + 6 * n_frequencies, width)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 3))
        self.compute_dtype = torch.float32  # of the matrix products (see the module docstring)
        self.cpu_slice_points: int | None = None  # points per CPU slice (None: CPU_SLICE_POINTS[compute_dtype])

    @property
    def cond_dim(self) -> int:
        return self.context.cond_dim

    @property
    def cond_embed(self) -> nn.Linear | None:
        """The condition's linear map (zero-initialised by ``with_condition``), or None."""
        return self.context.cond_embed

    def trunk(self, h: torch.Tensor, z: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """``z (B, N, 3)``, ``t (B,)`` in [0, 1], ``cond (B, C)`` or None -> ε̂ ``(B, N, 3)``.

        ``mask`` is accepted for the :class:`common.diffusion.Denoiser` interface and ignored: every
        cloud of a batch has all N points.
        """
        if z.dim() != 3 or z.shape[-1] != 3:
            raise ValueError(f"a point denoiser takes clouds of shape (B, N, 3), got {tuple(z.shape)}")
        t = t.to(z.dtype).expand(z.shape[0]) if t.dim() == 0 else t.to(z.dtype)
        low = self.compute_dtype != torch.float32
        with torch.autocast(z.device.type, dtype=self.compute_dtype, enabled=low):
            if z.device.type != "cpu":
                return self._forward(z, t, cond).to(z.dtype)
            size = max(1, (self.cpu_slice_points or CPU_SLICE_POINTS[self.compute_dtype]) // z.shape[1])
            return in_batch_slices(self._forward, (z, t, cond), size).to(z.dtype)

    def _forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        ctx = self.context(t, cond, z.shape[0])
        h = self.embed(fourier_features(z, self.n_frequencies)) + ctx.unsqueeze(1)
        return self.head(self.trunk(h, z, ctx))


class PointVoxelDenoiser(PointDenoiser):
    """The ``pvd`` candidate: ``depth`` :class:`PointVoxelBlock` s on one ``resolution³`` grid over
    ``[-extent, extent]³`` with ``voxel_channels`` features per cell.

    The grid averages, and the global pool takes the maximum over, the first K = ``grid_points`` points
    of a cloud (all of them when it has fewer; ``None``: always all), and every point reads both. So the
    first K points of a larger cloud are denoised exactly as a K-point cloud would be, and the others
    read the same context; the points of a sampled cloud are exchangeable (the sampler's noise is i.i.d.
    over them), so the first K are a uniform random subset, with the statistics of the clouds the network
    was trained on. Measured on the shipped prior (40 validation clouds, ε-loss at t = 300 / 500 / 800,
    benchmarks/results/shapes_points.json): 0.284 / 0.071 / 0.0020 at 512 points; at 2,048 0.350 / 0.118 /
    0.0077 with grid and pool over all points, 0.285 / 0.070 / 0.0019 over the first 512.
    Above K points the output is permutation-equivariant in distribution, not exactly.

    With ``neighbours`` k' > 0 every block also reads each point's k' nearest anchors (the same first K
    points; :class:`LocalMax`, ``width // 2`` channels), which the 8³ grid, with cells of 0.9 units,
    cannot resolve: the neighbourhood's radius depends on K, not on N, as the grid's does.
    """

    def __init__(self, width: int = 128, depth: int = 4, cond_dim: int = 0, n_frequencies: int = 4,
                 resolution: int = 8, voxel_channels: int = 32, extent: float = 3.5, grid_points: int | None = None,
                 neighbours: int = 0):
        super().__init__(width, cond_dim, n_frequencies)
        self.grid = VoxelGrid(resolution, extent)
        self.grid_points, self.neighbours = grid_points, neighbours
        local = width // 2 if neighbours else 0
        self.blocks = nn.ModuleList(PointVoxelBlock(width, voxel_channels, local) for _ in range(depth))

    def trunk(self, h: torch.Tensor, z: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        points = self.grid.assign(z)
        k = z.shape[1] if self.grid_points is None else min(self.grid_points, z.shape[1])
        cells = points if k == z.shape[1] else self.grid.assign(z[:, :k])
        index = knn_indices(z, self.neighbours, z[:, :k]) if self.neighbours else None
        for block in self.blocks:
            h = block(h, ctx, cells, points, k, z, index)
        return h


class SetTransformerDenoiser(PointDenoiser):
    """The ``transformer`` candidate: ``depth`` :class:`SetTransformerBlock` s with ``n_inducing``
    inducing vectors and ``heads`` attention heads each."""

    def __init__(self, width: int = 128, depth: int = 4, cond_dim: int = 0, n_frequencies: int = 4,
                 n_inducing: int = 32, heads: int = 4):
        super().__init__(width, cond_dim, n_frequencies)
        self.blocks = nn.ModuleList(SetTransformerBlock(width, n_inducing, heads) for _ in range(depth))

    def trunk(self, h: torch.Tensor, z: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, ctx)
        return h


class PointNetDenoiser(PointDenoiser):
    """The ``pointnet`` reference: ``depth`` :class:`PointNetBlock` s."""

    def __init__(self, width: int = 256, depth: int = 6, cond_dim: int = 0, n_frequencies: int = 4):
        super().__init__(width, cond_dim, n_frequencies)
        self.blocks = nn.ModuleList(PointNetBlock(width) for _ in range(depth))

    def trunk(self, h: torch.Tensor, z: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, ctx)
        return h


def build_denoiser(arch: str, width: int, depth: int, cond_dim: int = 0, n_frequencies: int = 4,
                   resolution: int = 8, voxel_channels: int = 32, extent: float = 3.5, n_inducing: int = 32,
                   heads: int = 4, grid_points: int | None = None, neighbours: int = 0) -> PointDenoiser:
    """The denoiser of architecture ``arch`` (``pvd``, ``transformer`` or ``pointnet``); options that
    belong to another architecture are ignored."""
    if arch == "pvd":
        return PointVoxelDenoiser(width, depth, cond_dim, n_frequencies, resolution, voxel_channels, extent,
                                  grid_points, neighbours)
    if arch == "transformer":
        return SetTransformerDenoiser(width, depth, cond_dim, n_frequencies, n_inducing, heads)
    if arch == "pointnet":
        return PointNetDenoiser(width, depth, cond_dim, n_frequencies)
    raise ValueError(f"unknown denoiser architecture {arch!r} (expected one of {', '.join(ARCHITECTURES)})")
