"""Shared helpers for symmetry tests."""
import torch


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    """A random 3×3 rotation (``reflect=False``) or improper rotation (``reflect=True``), float64."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def is_centered(space, x: torch.Tensor, mask: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether the masked mean of the space's centred dimensions of ``x (B, N, D)`` is zero."""
    k = space.centered_dims
    m = mask.unsqueeze(-1).to(x.dtype)
    mean = (x[..., :k] * m).sum(1) / m.sum(1).clamp(min=1)
    return bool(mean.abs().max() <= atol) if k else True
