"""A dense E(n)-equivariant graph network (Satorras et al. 2021) in EDM's denoiser design.

Each molecule is a fully connected graph without self-loops, held as dense tensors: node features
``h (B, N, H)``, coordinates ``x (B, N, 3)``, node mask ``(B, N)``. One layer is

    m_ij = φ_e(h_i, h_j, ‖x_i − x_j‖², ‖x⁰_i − x⁰_j‖²) · sigmoid(φ_att(m_ij))      (message, attention)
    h_i ← h_i + φ_h(h_i, Σ_j m_ij)
    x_i ← x_i + Σ_j (x_i − x_j)/(‖x_i − x_j‖ + 1) · tanh(φ_x(h_i, h_j, d_ij, d⁰_ij)) · r

with x⁰ the input coordinates and r = 15 Å (EDM's ``coords_range``). Messages only depend on
invariants, and coordinates move along relative vectors, so h is E(3)-invariant and x equivariant.

Speed: the first linear map of φ_e and φ_x acts on a concatenation [h_i, h_j, d] and is split as
W_a·h_i + W_b·h_j + w·d, computed per node (O(N·H²)) and broadcast over pairs, instead of per edge
(O(N²·H²)). Everything else is batched dense algebra with masks, no gather/scatter. On the CPU
the batch is processed in slices whose pair tensors stay below ~1 MB (``CPU_PAIR_ELEMENTS``): large
fresh allocations cost page faults on every call (glibc maps them anew), which measured as about
half the time of an unsliced step at EDM's size (benchmarks/speed.py). Molecules are independent,
so slicing changes nothing but the speed.

Precision: with ``compute_dtype = torch.bfloat16`` (:func:`common.runtime.set_precision`) the matrix
products run under autocast in bfloat16 while the residual stream h, the coordinates x and every
distance stay float32 (an increment computed in bfloat16 is added to a float32 tensor); the pair
tensors are then half the bytes, and a CPU slice holds four times the pairs (the faster size). What it
gains and what it does to validity: ``benchmarks.speed --precision``, ``benchmarks.prior_samples --row``.
"""
from __future__ import annotations

from functools import cache, partial

import torch
from torch import nn

from common.runtime import in_batch_slices


def dense_masks(mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask (B, N)`` -> node mask ``(B, N, 1)`` and edge mask ``(B, N, N, 1)`` (no self-loops)."""
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    edge_mask = (mask.unsqueeze(2) & mask.unsqueeze(1)) & ~eye
    return mask.unsqueeze(-1).to(dtype), edge_mask.unsqueeze(-1).to(dtype)


#: Largest (b, N, N, H) pair tensor of one CPU slice, by the dtype of the matrix products: 1 MB and 2 MB
#: (a sweep of the EDM-size step from 0.5 to 4 MB, not recorded: bfloat16 gained from 1 to 2 MB, float32 did not).
CPU_PAIR_ELEMENTS = {torch.float32: 2**18, torch.bfloat16: 2**20}


def in_cpu_slices(fn, tensors: tuple[torch.Tensor, ...], width: int, dtype: torch.dtype = torch.float32):
    """``fn(*tensors)`` over batch slices whose ``(b, N, N, width)`` pair tensors stay below
    :data:`CPU_PAIR_ELEMENTS` of ``dtype`` when on the CPU (see the module docstring; the first tensor's
    first two dimensions are the batch and the node dimension), :func:`common.runtime.in_batch_slices`."""
    if tensors[0].device.type != "cpu":
        return fn(*tensors)
    n = tensors[0].shape[1]
    return in_batch_slices(fn, tensors, max(1, CPU_PAIR_ELEMENTS[dtype] // (n * n * width)))


class PairLinear(nn.Module):
    """Linear map of [h_i, h_j, e_ij] for all pairs, ``(B, N, H), (B, N, N, E) -> (B, N, N, F)``."""

    def __init__(self, node_dim: int, edge_dim: int, out_dim: int):
        super().__init__()
        self.src = nn.Linear(node_dim, out_dim)
        self.dst = nn.Linear(node_dim, out_dim, bias=False)
        self.edge = nn.Linear(edge_dim, out_dim, bias=False)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.src(h).unsqueeze(2) + self.dst(h).unsqueeze(1) + self.edge(e)


class MessageLayer(nn.Module):
    """The invariant half of an EDM block: attention-weighted messages update the node features."""

    def __init__(self, hidden: int, edge_dim: int = 2):
        super().__init__()
        act = nn.SiLU()
        self.message_in = PairLinear(hidden, edge_dim, hidden)
        self.message = nn.Sequential(act, nn.Linear(hidden, hidden), act)
        self.attention = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), act, nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, edges: torch.Tensor, node_mask: torch.Tensor,
                edge_mask: torch.Tensor) -> torch.Tensor:
        """``h (B,N,H)``, ``edges (B,N,N,E)``, ``node_mask (B,N,1)``, ``edge_mask (B,N,N,1)`` -> ``h (B,N,H)``."""
        m = self.message(self.message_in(h, edges))
        m = m * self.attention(m) * edge_mask.to(m.dtype)
        return (h + self.node(torch.cat([h, m.sum(2).to(h.dtype)], dim=-1))) * node_mask


class EquivariantLayer(MessageLayer):
    """One EDM block: an attention message-passing update of h, then a tanh-bounded update of x."""

    def __init__(self, hidden: int, edge_dim: int = 2, coords_range: float = 15.0):
        super().__init__(hidden, edge_dim)
        act = nn.SiLU()
        self.coord_in = PairLinear(hidden, edge_dim, hidden)
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord = nn.Sequential(act, nn.Linear(hidden, hidden), act, last)
        self.coords_range = coords_range

    def forward(self, h: torch.Tensor, x: torch.Tensor, d0: torch.Tensor, node_mask: torch.Tensor,
                edge_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h (B,N,H)``, ``x (B,N,3)``, ``d0 (B,N,N,1)``, ``node_mask (B,N,1)``, ``edge_mask (B,N,N,1)``."""
        diff = x.unsqueeze(2) - x.unsqueeze(1)  # (B, N, N, 3), x_i − x_j
        d2 = (diff**2).sum(-1, keepdim=True)
        edges = torch.cat([d2, d0], dim=-1)
        h = super().forward(h, edges, node_mask, edge_mask)

        direction = diff / (torch.sqrt(d2 + 1e-8) + 1.0)
        weight = torch.tanh(self.coord(self.coord_in(h, edges))) * self.coords_range
        x = x + (direction * weight * edge_mask).sum(2)
        return h, x * node_mask


class EGNN(nn.Module):
    """Stack of :class:`EquivariantLayer` between linear embeddings of the node features.

    Args:
        in_dim: input node features. out_dim: output node features.
        hidden: width H. n_layers: number of blocks.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, n_layers: int = 9):
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.layers = nn.ModuleList(EquivariantLayer(hidden) for _ in range(n_layers))
        self.readout = nn.Linear(hidden, out_dim)
        self.compute_dtype = torch.float32  # of the matrix products (see the module docstring)
        self.compiled = False  # run each batch slice through torch.compile (:meth:`compile_slices`)

    def compile_slices(self) -> EGNN:
        """Run the computation of one batch slice compiled (``torch.compile``, dynamic shapes: one graph
        serves every slice and molecule size), the loop over slices as it is. Compiling the whole
        forward instead unrolls that loop into the graph, a copy per slice (64 at EDM's size), and took
        over 40 minutes to compile there. Returns ``self``."""
        self.compiled = True
        return self

    def forward(self, h: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h (B, N, in_dim)``, ``x (B, N, 3)``, ``mask (B, N)`` -> ``h (B, N, out_dim)``, ``x (B, N, 3)``.

        ``shift (B, hidden)`` is added to every node's embedding (a condition's contribution)."""
        if shift is None:
            shift = h.new_zeros(h.shape[0], self.embed.out_features)
        low = self.compute_dtype != torch.float32
        with torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low):
            forward = partial(_compiled_forward(), self) if self.compiled else self._forward
            h, x = in_cpu_slices(forward, (h, x, mask, shift), self.embed.out_features, self.compute_dtype)
        return h.to(x.dtype), x

    def _forward(self, h: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                 shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        node_mask, edge_mask = dense_masks(mask, x.dtype)
        d0 = ((x.unsqueeze(2) - x.unsqueeze(1)) ** 2).sum(-1, keepdim=True)
        h = (self.embed(h) + shift.unsqueeze(1)) * node_mask
        for layer in self.layers:
            h, x = layer(h, x, d0, node_mask, edge_mask)
        return self.readout(h) * node_mask, x


@cache
def _compiled_forward():
    """:meth:`EGNN._forward` compiled once per process (every model that asks shares its graphs)."""
    return torch.compile(EGNN._forward, dynamic=True)
