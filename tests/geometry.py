"""Shared helpers for symmetry tests."""
import torch


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    """A random 3×3 rotation (``reflect=False``) or improper rotation (``reflect=True``), float64."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q
