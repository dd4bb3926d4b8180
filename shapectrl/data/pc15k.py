"""ShapeNetCore.v2.PC15k in PointFlow's folder layout, for users who have it on disk.

Layout: ``<root>/<synset id>/{train,val,test}/<model id>.npy``, each an array ``(15000, 3)`` of
points sampled on one ShapeNet model. Each cloud is subsampled to ``n_points`` points, without
replacement, by a generator seeded with ``seed`` (clouds in order: class by class, files by name).
PointFlow instead draws training points from the first 10,000 and test points from the last 5,000
of each file at every access; a fixed subsample keeps evaluation deterministic.

Labels are this package's class ids (:data:`~shapectrl.data.families.CLASSES`), so ShapeNet and
procedural labels agree. Points stay in the files' units; the normalisation is PointFlow's global
one (:mod:`shapectrl.data.normalisation`), fitted on the training split.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from shapectrl.data.families import class_id
from shapectrl.data.normalisation import Normalisation, NormalisedClouds
from shapectrl.io import ShapeFileError

#: ShapeNet synset id of each class.
SYNSETS: dict[str, str] = {
    "airplane": "02691156",
    "chair": "03001627",
    "car": "02958343",
    "table": "04379243",
    "lamp": "03636649",
}
#: This package's split names -> PointFlow's folder names.
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "valid": "val", "test": "test"}
LAYOUT = "<root>/<synset id>/{train,val,test}/<model id>.npy"


def _folder(root: Path, name: str, split: str) -> Path:
    if not root.is_dir():
        raise ShapeFileError(f"{root}: no such folder (expected ShapeNetCore.v2.PC15k laid out as {LAYOUT})")
    if name not in SYNSETS:
        raise ValueError(f"class {name!r} has no ShapeNet synset here (expected one of {', '.join(SYNSETS)})")
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLIT_FOLDERS)})")
    folder = root / SYNSETS[name] / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise ShapeFileError(f"{folder}: no such folder (expected the {split} split of {name}, {LAYOUT})")
    return folder


def read_cloud(path: Path, n_points: int) -> np.ndarray:
    """One ``.npy`` cloud ``(K, 3)`` with ``K >= n_points``, as float32; one-line errors otherwise."""
    try:
        cloud = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ShapeFileError(f"{path}: not a readable .npy array ({' '.join(str(err).split())})") from None
    if cloud.ndim != 2 or cloud.shape[1] != 3 or cloud.shape[0] < n_points:
        raise ShapeFileError(f"{path}: array of shape {cloud.shape} (expected (K, 3) with K >= {n_points} points, "
                             "PC15k has (15000, 3))")
    if not np.issubdtype(cloud.dtype, np.number) or not np.isfinite(cloud).all():
        raise ShapeFileError(f"{path}: holds values that are not finite numbers")
    return cloud.astype(np.float32)


class ShapeNetPC15k(NormalisedClouds):
    """A split of ShapeNetCore.v2.PC15k as tensors.

    Attributes:
        points: ``(M, N, 3)`` float32 in the files' units (un-normalised), class by class.
        labels: ``(M,)`` int64 class ids; ``model_ids``: ``"<synset>/<model>"`` per cloud.
        normalisation: the training split's global normalisation (see :attr:`normalised_points`).

    Args:
        root: the PC15k folder. split: ``train``, ``valid`` (folder ``val``) or ``test``.
        classes: class names with a synset in :data:`SYNSETS`. n_points: points kept per cloud.
        seed: seed of the subsampling. limit: at most this many clouds per class (first by name).
        normalisation: the training split's; fitted here for ``train`` when not given, and for
            ``valid``/``test`` fitted on this root's training split (same classes, points, seed).
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", classes: Sequence[str] = ("airplane", "chair", "car"),
        n_points: int = 2048, seed: int = 0, limit: int | None = None, normalisation: Normalisation | None = None,
    ) -> None:
        root = Path(root)
        self.split, self.classes, self.n_points = split, tuple(classes), n_points
        rng = np.random.default_rng(seed)
        clouds, labels, ids = [], [], []
        for name in self.classes:
            label = class_id(name)
            files = sorted(_folder(root, name, split).glob("*.npy"))[:limit]
            if not files:
                raise ShapeFileError(f"{root / SYNSETS[name] / SPLIT_FOLDERS[split]}: no .npy files (expected {LAYOUT})")
            for f in files:
                cloud = read_cloud(f, n_points)
                clouds.append(cloud[rng.choice(len(cloud), n_points, replace=False)])
                labels.append(label)
                ids.append(f"{SYNSETS[name]}/{f.stem}")
        self.points = torch.from_numpy(np.stack(clouds))
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.model_ids = ids
        self.normalisation = normalisation or self.split_normalisation(
            split, self.points, lambda: ShapeNetPC15k(root, "train", self.classes, n_points, seed, limit))
