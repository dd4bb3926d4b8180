"""Labelled procedural shapes: one shape per (class, seed), and data sets split by seed ranges.

**Canonical frame.** y is up, the front of every shape faces +z (an airplane's nose, a car's
bonnet, the side of a chair one sits down from), and the shape is mirror-symmetric across x = 0.
Each mesh is translated so the centre of its bounding box is the origin. Lengths are model units
(about metres for chairs, tables and lamps; airplanes and cars are scaled to a similar size).

**Determinism.** ``make_shape(class_name, seed, n_points)`` draws the parameters and the points
from two streams spawned from ``SeedSequence([seed, class_id])``: the same seed gives the same
shape for every ``n_points``, and the same points for the same ``n_points``.

**Splits.** Shape seeds of the train split lie in ``[0, 1e6)``, of valid in ``[1e6, 2e6)`` and of
test in ``[2e6, 3e6)`` (:data:`SPLIT_SEED_RANGES`), so splits never share a shape. A data set of
``per_class`` shapes takes the first ``per_class`` entries of a permutation of its split's range
drawn with the data-set seed; every class uses the same shape seeds (the class id enters the
stream). Growing ``per_class`` keeps the shapes already there.

**Normalisation.** :class:`ProceduralShapes` keeps points in model units and carries one global
:class:`~shapectrl.data.normalisation.Normalisation` fitted on the training split (PointFlow's
protocol); the validation and test splits use the training split's.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.runtime import atomic_path
from shapectrl.data.families import CLASSES, builder, class_id, sampler
from shapectrl.data.mesh import Mesh, sample_surface
from shapectrl.data.normalisation import Normalisation, NormalisedClouds

SPLITS = ("train", "valid", "test")
SEEDS_PER_SPLIT = 1_000_000
#: Half-open range of shape seeds of each split.
SPLIT_SEED_RANGES: dict[str, range] = {
    split: range(k * SEEDS_PER_SPLIT, (k + 1) * SEEDS_PER_SPLIT) for k, split in enumerate(SPLITS)
}
DEFAULT_POINTS = 2048
#: Bumped whenever the families change, so that old caches are not reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True, eq=False)
class Shape:
    """One procedural shape: ``points (N, 3)`` float32 in model units, its class label and the
    parameters it was built from."""

    points: np.ndarray
    label: int
    params: dict
    seed: int

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def _streams(class_name: str, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    if seed < 0:
        raise ValueError(f"shape seed {seed} is negative (expected a seed >= 0)")
    params, points = np.random.SeedSequence([seed, class_id(class_name)]).spawn(2)
    return np.random.default_rng(params), np.random.default_rng(points)


def shape_params(class_name: str, seed: int) -> dict:
    """The parameters of shape ``seed`` of class ``class_name``."""
    return sampler(class_name)(_streams(class_name, seed)[0])


def shape_mesh(class_name: str, params: dict) -> Mesh:
    """The mesh of a ``class_name`` with ``params``, its bounding box centred on the origin."""
    mesh = builder(class_name)(params)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    return mesh.moved(offset=-(lo + hi) / 2)


def make_shape(class_name: str, seed: int, n_points: int = DEFAULT_POINTS) -> Shape:
    """Shape ``seed`` of class ``class_name`` with ``n_points`` points sampled uniformly by area."""
    param_rng, point_rng = _streams(class_name, seed)
    params = sampler(class_name)(param_rng)
    points = sample_surface(shape_mesh(class_name, params), n_points, point_rng)
    return Shape(points.astype(np.float32), class_id(class_name), params, seed)


def split_seeds(split: str, n: int, seed: int = 0) -> np.ndarray:
    """The ``n`` shape seeds of ``split`` for data-set seed ``seed``, ``(n,)`` int64."""
    if split not in SPLIT_SEED_RANGES:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if not 0 <= n <= SEEDS_PER_SPLIT:
        raise ValueError(f"cannot draw {n} shapes per class (expected 0 to {SEEDS_PER_SPLIT})")
    order = np.random.default_rng(seed).permutation(SEEDS_PER_SPLIT)[:n]
    return SPLIT_SEED_RANGES[split].start + order.astype(np.int64)


def generate(classes: Sequence[str], seeds: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Shapes of every class for every seed, class by class.

    Returns ``points (M, N, 3)`` float32, ``labels (M,)`` int64, ``seeds (M,)`` int64 and the
    parameter dicts, with ``M = len(classes) * len(seeds)``.
    """
    m = len(classes) * len(seeds)
    points = np.empty((m, n_points, 3), dtype=np.float32)
    labels = np.empty(m, dtype=np.int64)
    params = []
    k = 0
    for name in classes:
        for seed in seeds.tolist():
            shape = make_shape(name, seed, n_points)
            points[k], labels[k] = shape.points, shape.label
            params.append(shape.params)
            k += 1
    return points, labels, np.tile(np.asarray(seeds, dtype=np.int64), len(classes)), params


def cache_name(split: str, classes: Sequence[str], per_class: int, n_points: int, seed: int) -> str:
    """File name of a cached data set, e.g. ``procedural-v1-train-airplane+chair-100x2048-seed0.npz``."""
    return f"procedural-v{GENERATOR_VERSION}-{split}-{'+'.join(classes)}-{per_class}x{n_points}-seed{seed}.npz"


class ProceduralShapes(NormalisedClouds):
    """A split of the procedural data set as tensors.

    Attributes:
        points: ``(M, N, 3)`` float32, model units (un-normalised), class by class.
        labels: ``(M,)`` int64 class ids (:data:`~shapectrl.data.families.CLASSES` order).
        seeds: ``(M,)`` int64 shape seeds; ``params``: the M parameter dicts.
        normalisation: the training split's global normalisation (see :attr:`normalised_points`).

    Args:
        split: ``train``, ``valid`` or ``test``.
        per_class: shapes per class in this split.
        n_points: points per shape.
        classes: class names, a subset of :data:`~shapectrl.data.families.CLASSES`.
        seed: data-set seed choosing the shape seeds inside each split's range.
        cache_dir: if given, the split is read from / written to an ``.npz`` there
            (:func:`cache_name`); writes are atomic.
        normalisation: the training split's normalisation. For ``train`` it is fitted here when
            not given; for ``valid``/``test`` it defaults to the one of the training split with
            ``train_per_class`` shapes per class (default ``per_class``) and the same ``n_points``,
            ``classes`` and ``seed``, generated or read from the cache.
        train_per_class: size of that training split, when ``normalisation`` is not given.
    """

    def __init__(
        self, split: str = "train", per_class: int = 100, n_points: int = DEFAULT_POINTS,
        classes: Sequence[str] = CLASSES, seed: int = 0, cache_dir: str | os.PathLike | None = None,
        normalisation: Normalisation | None = None, train_per_class: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        self.split, self.per_class, self.n_points = split, per_class, n_points
        self.classes = tuple(classes)
        for name in self.classes:
            class_id(name)
        if n_points < 1 or per_class < 1:
            raise ValueError(f"cannot make {per_class} shapes per class of {n_points} points (expected at least 1 of each)")
        self.seed = seed
        self.cache_path = None if cache_dir is None else Path(cache_dir) / cache_name(split, self.classes, per_class, n_points, seed)
        self.build_seconds = 0.0
        points, labels, seeds, params, stored = self._load_or_build()
        self.points = torch.from_numpy(points)
        self.labels = torch.from_numpy(labels)
        self.seeds = seeds
        self.params = params
        size = per_class if train_per_class is None else train_per_class
        self.normalisation = normalisation or stored or self.split_normalisation(
            split, points, lambda: ProceduralShapes("train", size, n_points, self.classes, seed, cache_dir))

    def _load_or_build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], Normalisation | None]:
        if self.cache_path is not None and self.cache_path.exists():
            return _read_cache(self.cache_path)
        t0 = time.perf_counter()
        seeds = split_seeds(self.split, self.per_class, self.seed)
        points, labels, all_seeds, params = generate(self.classes, seeds, self.n_points)
        self.build_seconds = time.perf_counter() - t0
        stored = Normalisation.fit(points) if self.split == "train" and len(points) else None
        if self.cache_path is not None:
            _write_cache(self.cache_path, points, labels, all_seeds, params, stored)
        return points, labels, all_seeds, params, stored


def _write_cache(path: Path, points: np.ndarray, labels: np.ndarray, seeds: np.ndarray, params: list[dict],
                 normalisation: Normalisation | None) -> None:
    extra = {} if normalisation is None else {"norm_mean": np.asarray(normalisation.mean), "norm_std": np.asarray(normalisation.std)}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, version=np.asarray(GENERATOR_VERSION), points=points, labels=labels, seeds=seeds,
                 params=np.asarray(json.dumps(params)), **extra)


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], Normalisation | None]:
    hint = "delete it to rebuild"
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        version = int(arrays["version"])
        params = json.loads(str(arrays["params"]))
        points, labels, seeds = arrays["points"], arrays["labels"], arrays["seeds"]
    except (OSError, KeyError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable shape cache ({' '.join(str(err).split())}; {hint})") from None
    if version != GENERATOR_VERSION:
        raise ValueError(f"{path}: cache of generator version {version} (expected {GENERATOR_VERSION}; {hint})")
    if points.ndim != 3 or points.shape[2] != 3 or not len(labels) == len(seeds) == len(params) == len(points):
        raise ValueError(f"{path}: inconsistent shape cache (points {points.shape}, {len(labels)} labels; {hint})")
    stored = None
    if "norm_mean" in arrays:
        stored = Normalisation.from_dict({"mean": arrays["norm_mean"].tolist(), "std": float(arrays["norm_std"])})
    return points, labels, seeds, params, stored
