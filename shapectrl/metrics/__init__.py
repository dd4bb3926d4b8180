"""Point-cloud metrics: Chamfer distance and EMD between clouds, and MMD / COV / 1-NNA between sets.

Conventions follow PointFlow (Yang et al., 2019), as PVD and LION use them: Chamfer is the sum of
the two mean squared nearest-neighbour distances; EMD the mean Euclidean distance of matched points.
"""
from shapectrl.metrics.chamfer import chamfer_distance, nearest_sq_distances
from shapectrl.metrics.emd import (
    APPROXMATCH_LEVELS,
    emd_approx,
    emd_approxmatch,
    emd_exact,
)
from shapectrl.metrics.generation import (
    DISTANCES,
    compute_all_metrics,
    mmd_cov,
    one_nn_accuracy,
    one_nn_sides,
    pairwise_distances,
)

__all__ = [
    "APPROXMATCH_LEVELS", "DISTANCES", "chamfer_distance", "compute_all_metrics", "emd_approx",
    "emd_approxmatch", "emd_exact", "mmd_cov", "nearest_sq_distances", "one_nn_accuracy", "one_nn_sides",
    "pairwise_distances",
]
