"""Set-level generation metrics: MMD, COV and 1-NNA from pairwise cloud distances (PointFlow's
``compute_all_metrics``), for the Chamfer distance and the EMD.

With a sample set S (B clouds) and a reference set R (M clouds) and a distance d between clouds:

* **MMD** (minimum matching distance) — ``mean over r in R of min over s in S of d(s, r)``; lower is
  better. ``mmd_smp`` is the reverse, ``mean over s of min over r``, reported for completeness.
* **COV** (coverage) — the fraction of R that is the nearest reference of at least one sample
  (each sample's nearest reference; ties to the lower reference index); higher is better.
* **1-NNA** — leave-one-out 1-nearest-neighbour accuracy of telling S from R in S ∪ R: every cloud
  is classified by its nearest other cloud, and the accuracy is the fraction classified into its
  own set. 50 % is ideal; 100 % means the sets are told apart perfectly; below 50 % means samples
  sit closer to references than to each other (for example copies of the references: a set
  compared with an exact copy of itself scores 0 %). **Ties** (several nearest neighbours at the
  same distance) count fractionally: a cloud scores the fraction of its tied nearest neighbours
  that belong to its own set, which is the expected accuracy under uniformly random tie-breaking.
  ``1nna_smp`` and ``1nna_ref`` are the same accuracy over the samples and over the references alone
  (1-NNA is their mean weighted by B and M). A high ``1nna_smp`` with ``1nna_ref`` near 50 % says
  the samples lie closer to each other than the references do (too little spread, or a signature
  of their own) while the references find samples as near as their own kind; a high ``1nna_ref``,
  that parts of the references have no sample near them.

Distances are computed in the frame of the clouds given (evaluate samples and references in the
same frame). CD is the squared-distance Chamfer sum of :mod:`shapectrl.metrics.chamfer`; EMD the mean
matched Euclidean distance of :mod:`shapectrl.metrics.emd`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from shapectrl.metrics.chamfer import MAX_BLOCK_ELEMENTS, chamfer_distance
from shapectrl.metrics.emd import emd_approx, emd_approxmatch, emd_exact

#: Cloud distances by name: ``fn(x (P, N, 3), y (P, N, 3)) -> (P,)``.
DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cd": chamfer_distance,
    "emd": emd_approxmatch,
    "emd-auction": emd_approx,
    "emd-exact": emd_exact,
}


def _distance(metric: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return DISTANCES[metric]
    except KeyError:
        raise ValueError(f"unknown cloud distance {metric!r} (expected one of {', '.join(DISTANCES)})") from None


def pairwise_distances(
    a: torch.Tensor, b: torch.Tensor | None = None, metric: str = "cd", max_block: int = MAX_BLOCK_ELEMENTS,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Distances between every cloud of ``a (A, N, 3)`` and every cloud of ``b (M, N, 3)``, ``(A, M)``.

    With ``b=None`` the matrix of ``a`` with itself, ``(A, A)``: only pairs ``i < j`` are computed,
    mirrored, with 0 on the diagonal. Pairs are processed in chunks of at most ``max_block``
    distance-matrix elements (``chunk * N * N``), so memory stays bounded; clouds stay on their
    device. ``progress(done, total)`` is called after every chunk.
    """
    fn = _distance(metric)
    symmetric = b is None
    b = a if b is None else b
    if a.dim() != 3 or b.dim() != 3 or a.shape[2] != 3 or b.shape[2] != 3:
        raise ValueError(f"cloud sets have shapes {tuple(a.shape)} and {tuple(b.shape)} (expected (A, N, 3) and (M, N, 3))")
    rows, cols = (torch.triu_indices(len(a), len(a), offset=1, device=a.device) if symmetric
                  else torch.cartesian_prod(torch.arange(len(a), device=a.device), torch.arange(len(b), device=a.device)).T)
    out = torch.zeros(len(a), len(b), dtype=a.dtype, device=a.device)
    chunk = max(1, max_block // (a.shape[1] * b.shape[1]))
    total = rows.numel()
    for k in range(0, total, chunk):
        i, j = rows[k:k + chunk], cols[k:k + chunk]
        out[i, j] = fn(a[i], b[j]).to(out.dtype)
        if progress is not None:
            progress(min(k + chunk, total), total)
    if symmetric:
        out = out + out.T
    return out


def mmd_cov(d_sr: torch.Tensor) -> dict[str, float]:
    """MMD, reverse MMD and COV (see the module docstring) from sample-to-reference distances
    ``d_sr (B, M)``."""
    if d_sr.dim() != 2 or 0 in d_sr.shape:
        raise ValueError(f"distance matrix has shape {tuple(d_sr.shape)} (expected (B, M) with B, M > 0)")
    nearest_ref = d_sr.argmin(dim=1)
    return {
        "mmd": float(d_sr.min(dim=0).values.mean()),
        "mmd_smp": float(d_sr.min(dim=1).values.mean()),
        "cov": nearest_ref.unique().numel() / d_sr.shape[1],
    }


def _one_nn_scores(d_ss: torch.Tensor, d_sr: torch.Tensor, d_rr: torch.Tensor) -> torch.Tensor:
    """Each cloud's leave-one-out 1-NN score over S ∪ R, ``(B + M,)``: the share of its nearest other
    clouds (ties) that belong to its own set; samples first."""
    n_s, n_r = d_sr.shape
    if d_ss.shape != (n_s, n_s) or d_rr.shape != (n_r, n_r):
        raise ValueError(f"distance matrices of shapes {tuple(d_ss.shape)}, {tuple(d_sr.shape)}, {tuple(d_rr.shape)} "
                         "do not fit together (expected (B, B), (B, M), (M, M))")
    full = torch.cat([torch.cat([d_ss, d_sr], dim=1), torch.cat([d_sr.T, d_rr], dim=1)], dim=0).double()
    full.fill_diagonal_(torch.inf)
    nearest = full == full.min(dim=1, keepdim=True).values
    in_s = torch.zeros(n_s + n_r, dtype=torch.bool, device=full.device)
    in_s[:n_s] = True
    same = in_s.unsqueeze(1) == in_s.unsqueeze(0)
    return (nearest & same).sum(dim=1).double() / nearest.sum(dim=1).double()


def one_nn_accuracy(d_ss: torch.Tensor, d_sr: torch.Tensor, d_rr: torch.Tensor) -> float:
    """Leave-one-out 1-NN accuracy over S ∪ R (ties counted fractionally; see the module docstring).

    ``d_ss (B, B)``, ``d_sr (B, M)`` and ``d_rr (M, M)``; diagonals are ignored.
    """
    return float(_one_nn_scores(d_ss, d_sr, d_rr).mean())


def one_nn_sides(d_ss: torch.Tensor, d_sr: torch.Tensor, d_rr: torch.Tensor) -> tuple[float, float]:
    """:func:`one_nn_accuracy` over the B samples alone and over the M references alone."""
    scores = _one_nn_scores(d_ss, d_sr, d_rr)
    return float(scores[: len(d_ss)].mean()), float(scores[len(d_ss):].mean())


def _labelled(progress: Callable[[str, int, int], None] | None, label: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(label, done, total)


def compute_all_metrics(
    samples: torch.Tensor, references: torch.Tensor, metrics: Sequence[str] = ("cd", "emd"),
    max_block: int = MAX_BLOCK_ELEMENTS, progress: Callable[[str, int, int], None] | None = None,
    reference_distances: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """MMD, reverse MMD, COV and 1-NNA of ``samples (B, N, 3)`` against ``references (M, N, 3)`` for
    each cloud distance in ``metrics`` (keys of :data:`DISTANCES`; ``emd`` is PointFlow's
    approximate EMD, comparable with published numbers).

    Keys are ``mmd-<metric>``, ``mmd_smp-<metric>``, ``cov-<metric>``, ``1nna-<metric>`` and its two
    sides ``1nna_smp-<metric>``, ``1nna_ref-<metric>`` (:func:`one_nn_sides`); COV and 1-NNA are
    fractions in [0, 1]. ``reference_distances`` caches the references' own distance
    matrices by metric (filled on first use), for scoring several sample sets against one reference set.
    """
    if samples.shape[1:] != references.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and references {tuple(references.shape)} "
                         "differ in points per cloud (expected (B, N, 3) and (M, N, 3))")
    results: dict[str, float] = {}
    for metric in metrics:
        _distance(metric)
        d_sr = pairwise_distances(samples, references, metric, max_block, _labelled(progress, f"{metric} S×R"))
        d_ss = pairwise_distances(samples, None, metric, max_block, _labelled(progress, f"{metric} S×S"))
        cache = {} if reference_distances is None else reference_distances
        if metric not in cache:
            cache[metric] = pairwise_distances(references, None, metric, max_block, _labelled(progress, f"{metric} R×R"))
        d_rr = cache[metric]
        if d_rr.shape != (len(references), len(references)):
            raise ValueError(f"cached {metric} reference distances {tuple(d_rr.shape)} do not fit {len(references)} references")
        for key, value in mmd_cov(d_sr).items():
            results[f"{key}-{metric}"] = value
        on_samples, on_references = one_nn_sides(d_ss, d_sr, d_rr)
        results[f"1nna-{metric}"] = (len(samples) * on_samples + len(references) * on_references) / (
            len(samples) + len(references))
        results[f"1nna_smp-{metric}"], results[f"1nna_ref-{metric}"] = on_samples, on_references
    return results
