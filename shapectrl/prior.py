"""The unconditional shape prior: a point-cloud ε-network inside a Gaussian diffusion on R^{N×3}.

Points live in the data set's global normalised frame (PointFlow's protocol, see
:class:`~shapectrl.data.Normalisation`); the model carries that normalisation so that samples can
be mapped back to model units, where attributes are measured. Shapes are not centred one by one,
so the state space is plain R^{N×3} (``PointSetSpace(centered_dims=0)``) and every coordinate counts
in the likelihood. The denoiser runs on any N: a prior trained on 512 points per cloud (a fresh random
subset of each shape's points at every step, :class:`ShapeBatches`) samples 2,048.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from common.conditioning import Conditionable
from common.diffusion import ANCESTRAL, GaussianDiffusion, Solver
from common.exports import Exportable, typed, typed_field
from common.schedules import NoiseSchedule
from common.spaces import PointSetSpace
from common.training import EpochSampler
from shapectrl.data.normalisation import Normalisation
from shapectrl.denoisers import ARCHITECTURES, PointDenoiser, build_denoiser


@dataclass
class ShapePriorConfig:
    """Architecture and diffusion hyper-parameters (defaults: sized for a 2-core CPU, see
    ``benchmarks/shapes_speed.py``; PVD itself uses a much larger point-voxel network).

    ``resolution``, ``voxel_channels`` and ``extent`` shape the ``pvd`` voxel branch, ``n_inducing``
    and ``heads`` the ``transformer`` attention. ``schedule`` defaults to PVD's linear β (1e-4 to 0.02,
    T = 1000). ``n_train_points`` is the cloud size the prior was trained on (samples may be larger; the
    ``pvd`` voxel grid then averages that many of their points). ``neighbours`` > 0 gives every ``pvd``
    block a local branch over each point's nearest of those points (0: none, as in the shipped prior).
    """

    arch: str = "pvd"
    width: int = 128
    depth: int = 4
    n_frequencies: int = 4
    resolution: int = 8
    voxel_channels: int = 32
    extent: float = 3.5
    n_inducing: int = 32
    heads: int = 4
    n_steps: int = 1000
    schedule: str = "linear"
    precision: float = 1e-5
    n_train_points: int = 512
    cond_dim: int = 0
    neighbours: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown denoiser architecture {self.arch!r} (expected one of {', '.join(ARCHITECTURES)})")
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be positive, got {self.width} and {self.depth}")

    def build_denoiser(self) -> PointDenoiser:
        return build_denoiser(self.arch, self.width, self.depth, self.cond_dim, self.n_frequencies, self.resolution,
                              self.voxel_channels, self.extent, self.n_inducing, self.heads, self.n_train_points,
                              self.neighbours)


class ShapeDiffusion(Conditionable, Exportable, nn.Module):
    """A trainable, sampleable point-cloud prior. ``forward(points (B, N, 3))`` returns the training loss.

    Args:
        config: hyper-parameters. normalisation: the training set's global normalisation (points in
            and out of the model are in its normalised frame). classes: names of the classes trained on.
    """

    kind = "shapectrl.prior"

    def __init__(self, config: ShapePriorConfig, normalisation: Normalisation | None = None,
                 classes: Sequence[str] = ()):
        super().__init__()
        self.config = config
        self.normalisation = normalisation or Normalisation.identity()
        self.classes = tuple(classes)
        self.denoiser = config.build_denoiser()
        self.diffusion = GaussianDiffusion(NoiseSchedule(config.schedule, config.n_steps, config.precision),
                                           PointSetSpace(centered_dims=0))

    @property
    def _anchor(self) -> torch.Tensor:
        return next(self.denoiser.parameters())

    @staticmethod
    def full_mask(points: torch.Tensor) -> torch.Tensor:
        """The all-true mask ``(B, N)`` of clouds ``(B, N, 3)`` (clouds are never padded)."""
        return torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)

    n_channels = 3

    def encode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clouds ``(B, N, 3)`` as the diffusion's states and their (all-true) mask ``(B, N)``."""
        return points, self.full_mask(points)

    def forward(self, points: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean ε-prediction loss of normalised clouds ``points (B, N, 3)`` (the trainer's objective)."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected clouds of shape (B, N, 3), got {tuple(points.shape)}")
        return self.diffusion.denoising_loss(self.denoiser, points, self.full_mask(points), cond).mean()

    @torch.no_grad()
    def sample(self, n: int, n_points: int | None = None, n_sampling_steps: int | None = None,
               generator: torch.Generator | None = None, cond: torch.Tensor | None = None,
               callback: Callable[[int], None] | None = None, denoiser: nn.Module | None = None,
               solver: Solver = ANCESTRAL) -> torch.Tensor:
        """Draw ``n`` clouds of ``n_points`` (default: the training size) with ``n_sampling_steps``
        reverse steps (None: all T) of ``solver`` -> ``(n, n_points, 3)`` in the normalised frame.

        ``cond (n, cond_dim)`` conditions a conditioned model; ``denoiser`` replaces the model's own.
        """
        n_points = n_points or self.config.n_train_points
        if n < 1 or n_points < 1:
            raise ValueError(f"cannot sample {n} clouds of {n_points} points (expected at least 1 of each)")
        anchor = self._anchor
        mask = torch.ones(n, n_points, dtype=torch.bool, device=anchor.device)
        return self.diffusion.sample(denoiser or self.denoiser, mask, self.n_channels, n_sampling_steps, cond=cond,
                                     generator=generator, callback=callback, dtype=anchor.dtype, solver=solver)

    def sample_many(self, n: int, n_points: int | None = None, n_sampling_steps: int | None = None,
                    generator: torch.Generator | None = None, batch_size: int = 16,
                    on_batch: Callable[[int], None] | None = None, cond: torch.Tensor | None = None,
                    denoiser: nn.Module | None = None, solver: Solver = ANCESTRAL) -> torch.Tensor:
        """:meth:`sample` in batches of at most ``batch_size``; ``on_batch(k)`` after each batch of k;
        ``cond (n, cond_dim)`` for a conditioned model, ``denoiser`` as in :meth:`sample`.
        ``-> (n, n_points, 3)`` on the CPU, normalised frame."""
        clouds = []
        done = 0
        while done < n:
            k = min(batch_size, n - done)
            rows = None if cond is None else cond[done : done + k].to(self._anchor.device)
            batch = self.sample(k, n_points, n_sampling_steps, generator, cond=rows, denoiser=denoiser,
                                solver=solver).cpu()
            clouds.append(batch)
            done += len(batch)
            if on_batch:
                on_batch(len(batch))
        return torch.cat(clouds)

    def denormalise(self, points: torch.Tensor) -> torch.Tensor:
        """Normalised clouds ``(..., 3)`` to model units."""
        return self.normalisation.denormalise(points)

    def reconfigured(self, config: ShapePriorConfig) -> ShapeDiffusion:
        """This model's untrained network under ``config`` (:class:`common.conditioning.Conditionable`)."""
        return ShapeDiffusion(config, self.normalisation, self.classes)

    def with_neighbours(self, k: int) -> ShapeDiffusion:
        """A copy whose ``pvd`` blocks also read each point's ``k`` nearest anchors
        (:class:`~shapectrl.denoisers.LocalMax`); the new branches' output maps are zero, so the copy starts as
        this model, and every other weight is copied."""
        if self.config.arch != "pvd" or self.config.neighbours:
            raise ValueError(f"only a pvd network without a local branch can grow one (this one: {self.config.arch}, "
                             f"{self.config.neighbours} neighbours)")
        if k < 1:
            raise ValueError(f"a local branch needs at least one neighbour, got {k}")
        model = self.reconfigured(replace(self.config, neighbours=k))
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        if unexpected or not all(".local." in key or ".from_local." in key for key in missing):
            raise RuntimeError(f"grown copy: missing {missing}, unexpected {unexpected}")
        return model.to(self._anchor.device)

    # -- shipping --------------------------------------------------------------------------------

    def export(self) -> dict:
        """What a weights file holds: config, normalisation, class names and weights."""
        return {"kind": self.kind, "config": asdict(self.config), "normalisation": self.normalisation.to_dict(),
                "classes": list(self.classes), "state_dict": self.state_dict()}

    @classmethod
    def from_metadata(cls, tree: dict) -> ShapeDiffusion:
        """The untrained network a weights tree describes (see :mod:`common.exports`)."""
        return cls(typed(ShapePriorConfig, typed_field(tree, "config"), "config"),
                   typed(Normalisation, typed_field(tree, "normalisation"), "normalisation"),
                   typed_field(tree, "classes", tuple[str, ...], ()))




def random_subset(clouds: torch.Tensor, n_points: int, generator: torch.Generator) -> torch.Tensor:
    """A uniform random subset of ``n_points`` points of each cloud: ``(B, P, 3) -> (B, n_points, 3)``
    (the clouds themselves when P = n_points)."""
    if n_points >= clouds.shape[1]:
        return clouds
    keep = torch.rand(clouds.shape[:2], generator=generator).argsort(1)[:, :n_points]
    return clouds.gather(1, keep.unsqueeze(-1).expand(-1, -1, 3))


class ShapeBatches:
    """Training batches as a deterministic function of the step (see :mod:`common.training`).

    Each step takes ``batch_size`` clouds in shuffled epochs and, from each, a fresh random subset of
    ``n_points`` of its points (so a prior trained on few points sees every point over time).
    Yields ``(points (B, n_points, 3),)``, followed by ``labels (B,)`` when labels are given.

    Args:
        points: ``(M, P, 3)`` clouds (normalised). batch_size: clouds per step and process.
        n_points: points per cloud per step (at most P). labels: ``(M,)`` int64 or None. seed: shuffling seed.
    """

    def __init__(self, points: torch.Tensor, batch_size: int, n_points: int, labels: torch.Tensor | None = None,
                 seed: int = 0):
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected clouds of shape (M, P, 3), got {tuple(points.shape)}")
        if not 1 <= n_points <= points.shape[1]:
            raise ValueError(f"cannot take {n_points} points per cloud from clouds of {points.shape[1]} points")
        self.points, self.labels = points.float(), labels
        self.n_points, self.seed = n_points, seed
        self.sampler = EpochSampler(len(points), batch_size, seed)

    def __len__(self) -> int:
        return len(self.points)

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        idx = torch.from_numpy(self.sampler.indices(step, rank, world_size))
        key = np.random.SeedSequence([self.seed, step, rank]).generate_state(1)[0]
        clouds = random_subset(self.points[idx], self.n_points, torch.Generator().manual_seed(int(key)))
        return (clouds,) if self.labels is None else (clouds, self.labels[idx])
