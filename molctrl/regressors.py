"""Two invariant graph regressors of molecular properties, ``(one-hot (B,N,F), positions (B,N,3), mask (B,N)) -> (B,P)``.

Both read the molecule as a fully connected graph, with interatomic distances expanded in Gaussian
radial functions, and end with EGNN's read-out ``y = φ_g(Σ_i φ_n(h_i))``. Their inner workings differ
so that the model giving a reward is never the one that scores the result:

* :class:`EGNNRegressor` — EDM's property evaluator (the EGNN of Satorras et al. for QM9): 7 blocks of
  attention message passing on invariant features, 128 features, coordinates left fixed. Dense
  tensors, like the prior's denoiser. Edges carry Gaussian radial features of ‖x_i − x_j‖ instead of
  the bare squared distance (faster to learn from, and cheap: the edge map is split per pair, see
  :class:`molctrl.egnn.PairLinear`).
* :class:`E3Regressor` — an e3nn network in NequIP's design: node features are irreps
  ``C×0e + C/2×1o + C/4×2e``; a message is the tensor product of the sender's features with the spherical
  harmonics ``Y(r̂_ij)`` (l ≤ 2) with weights from a radial MLP, per channel ("uvu"), summed over
  neighbours, then a linear mix, a gated non-linearity and a residual. Its read-out uses the invariant
  (0e) channels only, so it is invariant to rotations *and* reflections.

Types enter as (possibly soft) one-hot vectors, so rewards built on these networks are differentiable
in both the positions and the type channels of a diffusion state.

**Dipole head** (``dipole_column``): |μ| is a vector's length, which a sum of invariant atom
contributions approximates poorly. With the head, that output column is

    |μ| = ‖ Σ_i (q_i − q̄)(x_i − x̄) + Σ_i μ_i ‖      (debye; q in e, x in Å)

with learned partial charges q_i (invariant, made neutral by subtracting their mean q̄) and, for the
e3nn network, learned atomic dipoles μ_i from its 1o channels (which also stand in for the hydrogens a
heavy-atom model does not see). It is invariant, and translation-free because Σ(q_i − q̄) = 0.
"""
from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from molctrl.egnn import MessageLayer, dense_masks, in_cpu_slices


def gaussian_rbf(distance: torch.Tensor, n_rbf: int, r_max: float) -> torch.Tensor:
    """``(...)`` distances in Å -> ``(..., n_rbf)`` Gaussians centred on ``linspace(0, r_max, n_rbf)``."""
    return soft_one_hot_linspace(distance, 0.0, r_max, n_rbf, basis="gaussian", cutoff=False)


E_ANGSTROM_IN_DEBYE = 4.80320  # 1 e·Å in debye


def dipole_magnitude(charges: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                     atomic_dipoles: torch.Tensor | None = None) -> torch.Tensor:
    """``charges (B, N)``, ``positions (B, N, 3)``, ``mask (B, N)``, ``atomic_dipoles (B, N, 3)`` in e·Å
    -> ``|μ| (B,)`` in debye (the equation of the module docstring)."""
    m = mask.to(positions.dtype)
    count = m.sum(1, keepdim=True).clamp(min=1)
    q = (charges - (charges * m).sum(1, keepdim=True) / count) * m
    centre = (positions * m.unsqueeze(-1)).sum(1, keepdim=True) / count.unsqueeze(-1)
    mu = (q.unsqueeze(-1) * (positions - centre)).sum(1)
    if atomic_dipoles is not None:
        mu = mu + (atomic_dipoles * m.unsqueeze(-1)).sum(1)
    return torch.sqrt((mu**2).sum(-1) + 1e-8) * E_ANGSTROM_IN_DEBYE


def with_column(out: torch.Tensor, k: int | None, values: torch.Tensor) -> torch.Tensor:
    """``out (B, P)`` with column ``k`` replaced by ``values (B,)`` (``out`` itself for ``k=None``)."""
    if k is None:
        return out
    return torch.cat([out[:, :k], values.unsqueeze(1), out[:, k + 1 :]], dim=1)


def _scalar_head(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))


def _readout(hidden: int, n_outputs: int) -> tuple[nn.Module, nn.Module]:
    act = nn.SiLU()
    node = nn.Sequential(nn.Linear(hidden, hidden), act, nn.Linear(hidden, hidden))
    graph = nn.Sequential(nn.Linear(hidden, hidden), act, nn.Linear(hidden, n_outputs))
    return node, graph


class EGNNRegressor(nn.Module):
    """EDM's evaluator: embedding, ``n_layers`` invariant attention blocks, sum read-out; with
    ``dipole_column``, that column is |μ| in debye from partial charges."""

    def __init__(self, n_types: int, n_outputs: int, hidden: int = 128, n_layers: int = 7,
                 n_rbf: int = 20, r_max: float = 10.0, dipole_column: int | None = None):
        super().__init__()
        self.n_rbf, self.r_max, self.dipole_column = n_rbf, r_max, dipole_column
        self.embed = nn.Linear(n_types, hidden)
        self.layers = nn.ModuleList(MessageLayer(hidden, edge_dim=n_rbf) for _ in range(n_layers))
        self.node_out, self.graph_out = _readout(hidden, n_outputs)
        self.charge = _scalar_head(hidden) if dipole_column is not None else None

    def forward(self, one_hot: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``one_hot (B, N, F)``, ``positions (B, N, 3)``, ``mask (B, N)`` -> ``(B, P)``."""
        return in_cpu_slices(self._forward, (one_hot, positions, mask), self.embed.out_features)

    def _forward(self, one_hot: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        node_mask, edge_mask = dense_masks(mask, positions.dtype)
        diff = positions.unsqueeze(2) - positions.unsqueeze(1)
        distance = torch.sqrt((diff**2).sum(-1) + 1e-12)  # finite gradient on the (masked) diagonal
        edges = gaussian_rbf(distance, self.n_rbf, self.r_max)
        h = self.embed(one_hot) * node_mask
        for layer in self.layers:
            h = layer(h, edges, node_mask, edge_mask)
        out = self.graph_out((self.node_out(h) * node_mask).sum(1))
        if self.charge is None:
            return out
        return with_column(out, self.dipole_column, dipole_magnitude(self.charge(h).squeeze(-1), positions, mask))


def graph_edges(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered atom pairs of each molecule: ``mask (B, N)`` -> ``(sender, receiver)``, each ``(E,)``,
    indexing the flat list of real atoms ``positions[mask]``."""
    b, n = mask.shape
    flat = torch.full((b, n), -1, dtype=torch.long, device=mask.device)
    flat[mask] = torch.arange(int(mask.sum()), device=mask.device)
    pair = mask.unsqueeze(2) & mask.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=mask.device)
    k, i, j = pair.nonzero(as_tuple=True)
    return flat[k, j], flat[k, i]


class Interaction(nn.Module):
    """One NequIP-style block: ``h_i ← Gate(W·Σ_j TP_w(r_ij)(h_j, Y(r̂_ij)) / √k + W'·h_i)``."""

    def __init__(self, irreps_in: o3.Irreps, irreps_hidden: o3.Irreps, irreps_sh: o3.Irreps, n_rbf: int,
                 avg_neighbours: float):
        super().__init__()
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0])
        self.gate = Gate(scalars, [nn.functional.silu], o3.Irreps(f"{gated.num_irreps}x0e"), [torch.sigmoid], gated)

        targets = {ir for _, ir in self.gate.irreps_in}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in targets:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        self.pre = o3.Linear(irreps_in, irreps_in)
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, o3.Irreps(mid), instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([n_rbf, 64, self.tp.weight_numel], nn.functional.silu)
        self.post = o3.Linear(o3.Irreps(mid), self.gate.irreps_in)
        self.skip = o3.Linear(irreps_in, self.gate.irreps_in)
        self.norm = 1.0 / math.sqrt(avg_neighbours)

    def forward(self, h: torch.Tensor, sh: torch.Tensor, rbf: torch.Tensor, sender: torch.Tensor,
                receiver: torch.Tensor) -> torch.Tensor:
        """``h (V, irreps_in)``, ``sh (E, irreps_sh)``, ``rbf (E, n_rbf)``, edges ``(E,)`` -> ``(V, irreps_hidden)``."""
        messages = self.tp(self.pre(h)[sender], sh, self.radial(rbf))
        summed = torch.zeros(h.shape[0], messages.shape[1], dtype=h.dtype, device=h.device)
        summed.index_add_(0, receiver, messages)
        return self.gate(self.post(summed * self.norm) + self.skip(h))


class E3Regressor(nn.Module):
    """e3nn regressor: one-hot embedding to ``C×0e``, ``n_layers`` :class:`Interaction` blocks, sum
    read-out; with ``dipole_column``, that column is |μ| in debye from partial charges (0e channels) and
    atomic dipoles (1o channels)."""

    def __init__(self, n_types: int, n_outputs: int, channels: int = 32, n_layers: int = 4, lmax: int = 2,
                 n_rbf: int = 20, r_max: float = 10.0, avg_neighbours: float = 8.0,
                 dipole_column: int | None = None):
        super().__init__()
        self.n_rbf, self.r_max, self.channels, self.dipole_column = n_rbf, r_max, channels, dipole_column
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        parts = [(channels, (0, 1))] + [(max(1, channels // 2**l), (l, (-1) ** l)) for l in range(1, lmax + 1)]
        irreps_hidden = o3.Irreps(parts)
        self.embed = nn.Linear(n_types, channels)
        irreps = o3.Irreps(f"{channels}x0e")
        layers = []
        for _ in range(n_layers):
            layers.append(Interaction(irreps, irreps_hidden, self.irreps_sh, n_rbf, avg_neighbours))
            irreps = layers[-1].gate.irreps_out
        self.layers = nn.ModuleList(layers)
        self.node_out, self.graph_out = _readout(channels, n_outputs)
        self.charge = self.atomic_dipole = None
        if dipole_column is not None:
            self.charge = _scalar_head(channels)
            self.atomic_dipole = o3.Linear(irreps, o3.Irreps("1x1o"))

    def forward(self, one_hot: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``one_hot (B, N, F)``, ``positions (B, N, 3)``, ``mask (B, N)`` -> ``(B, P)``."""
        sender, receiver = graph_edges(mask)
        x = positions[mask]
        vectors = x[sender] - x[receiver]
        distance = torch.sqrt((vectors**2).sum(-1) + 1e-12)
        sh = o3.spherical_harmonics(self.irreps_sh, vectors, normalize=True, normalization="component")
        rbf = gaussian_rbf(distance, self.n_rbf, self.r_max)
        h = self.embed(one_hot[mask])
        for layer in self.layers:
            h = layer(h, sh, rbf, sender, receiver)
        node = self.node_out(h[:, : self.channels])  # the 0e channels come first
        pooled = torch.zeros(mask.shape[0], node.shape[1], dtype=node.dtype, device=node.device)
        pooled.index_add_(0, mask.nonzero()[:, 0], node)
        out = self.graph_out(pooled)
        if self.charge is None:
            return out
        charges = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        charges[mask] = self.charge(h[:, : self.channels]).squeeze(-1)
        dipoles = torch.zeros(*mask.shape, 3, dtype=h.dtype, device=h.device)
        dipoles[mask] = self.atomic_dipole(h)
        return with_column(out, self.dipole_column, dipole_magnitude(charges, positions, mask, dipoles))
