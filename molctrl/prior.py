"""The unconditional molecule prior: an EGNN denoiser inside an E(3)-invariant Gaussian diffusion.

State of a molecule with n atoms: ``x = [positions, one_hot(types)/4] (N_max, 3 + F)`` and a mask.
Positions live in the zero centre-of-mass subspace; one-hot types are scaled by EDM's normalisation
factor 4, and decoded by argmax. The number of atoms is drawn from the training histogram.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from common.conditioning import Conditionable
from common.diffusion import ANCESTRAL, GaussianDiffusion, Solver
from common.exports import Exportable, tensor_shape, typed, typed_field
from common.schedules import NoiseSchedule
from common.spaces import PointSetSpace
from molctrl.data.qm9 import Setting, get_setting
from molctrl.egnn import EGNN
from molctrl.molecule import Molecule


@dataclass
class PriorConfig:
    """Architecture and diffusion hyper-parameters (EDM's full size: ``qm9``, 9 layers, 256 features)."""

    setting: str = "qm9-noh"
    hidden: int = 128
    n_layers: int = 6
    n_steps: int = 1000
    schedule: str = "polynomial_2"
    precision: float = 1e-5
    type_scale: float = 0.25  # EDM's normalize factor 4 for one-hot types
    cond_dim: int = 0  # width of a condition vector appended to every node's features (0: unconditional)
    cond_gate: str = "time"  # the condition enters as t·W_c c ("time") or W_c c ("none"), see MoleculeDenoiser


class MoleculeDenoiser(nn.Module):
    """ε_θ(z_t, t, c): EGNN over node features [types, t, c]; the position output is x_out − x_in, centred.

    A condition ``c (B, cond_dim)`` enters every node's embedding as ``t·W_c c``: a linear map of its
    own (EDM-cond appends c to the node features, the same map, but as a separate parameter fine-tuning
    can give it its own learning rate), gated by the time t ∈ [0, 1]. The gate builds in that the
    exact conditional's ε differs from the unconditional one by −σ_t ∇ log p(y | z_t), which vanishes
    like σ_t ≈ √2·t as t → 0, and keeps the condition from moving the last steps, whose KL weight
    grows like 1/σ_s² (without it CTRL's KL spiked to 10⁴–10⁵ within 10 steps and diverged).
    ``gate="none"`` drops the gate: W_c c at every t. The gate also mutes the condition where guidance's
    shift is largest: σ_t·∇log p(y | z_t) tends to σ_t·∇log p(y | x), which is steep for a sharp likelihood.
    """

    def __init__(self, n_types: int, hidden: int, n_layers: int, cond_dim: int = 0, gate: str = "time"):
        super().__init__()
        if gate not in ("time", "none"):
            raise ValueError(f"unknown condition gate {gate!r} (expected time or none)")
        self.n_types, self.cond_dim, self.gate = n_types, cond_dim, gate
        self.egnn = EGNN(n_types + 1, n_types, hidden, n_layers)
        self.cond_embed = nn.Linear(cond_dim, hidden, bias=False) if cond_dim else None

    def forward(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x, h = z[..., :3], z[..., 3:]
        h = torch.cat([h, t.view(-1, 1, 1).expand(-1, z.shape[1], 1)], dim=-1)
        shift = None
        if self.cond_embed is not None:
            if cond is None or cond.shape != (z.shape[0], self.cond_dim):
                raise ValueError(f"a conditioned denoiser needs cond of shape ({z.shape[0]}, {self.cond_dim}), "
                                 f"got {None if cond is None else tuple(cond.shape)}")
            shift = self.cond_embed(cond.to(z.dtype))
            if self.gate == "time":
                shift = shift * t.to(z.dtype).view(-1, 1)
        h_out, x_out = self.egnn(h, x, mask, shift)
        m = mask.unsqueeze(-1).to(z.dtype)
        eps_x = (x_out - x) * m
        eps_x = eps_x - eps_x.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1) * m
        return torch.cat([eps_x, h_out], dim=-1)


class MoleculeDiffusion(Conditionable, Exportable, nn.Module):
    """A trainable, sampleable molecule prior. ``forward(types, positions)`` returns the training loss.

    Args:
        config: hyper-parameters. n_atoms_hist: molecule counts per atom count, ``(N_max + 1,)``.
    """

    kind = "molctrl.prior"

    def __init__(self, config: PriorConfig, n_atoms_hist: np.ndarray | torch.Tensor):
        super().__init__()
        self.config = config
        self.setting: Setting = get_setting(config.setting)
        self.n_types = len(self.setting.atom_decoder)
        self.denoiser = MoleculeDenoiser(self.n_types, config.hidden, config.n_layers, config.cond_dim,
                                        config.cond_gate)
        self.diffusion = GaussianDiffusion(
            NoiseSchedule(config.schedule, config.n_steps, config.precision), PointSetSpace(centered_dims=3)
        )
        self.register_buffer("n_atoms_hist", torch.as_tensor(np.asarray(n_atoms_hist), dtype=torch.float32))

    @property
    def n_channels(self) -> int:
        return 3 + self.n_types

    def encode(self, types: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``types (B, N)`` (−1 = padding), ``positions (B, N, 3)`` -> state ``x (B, N, 3+F)``, ``mask (B, N)``."""
        mask = types >= 0
        one_hot = nn.functional.one_hot(types.clamp(min=0), self.n_types).to(positions.dtype)
        x = torch.cat([positions, one_hot * self.config.type_scale], dim=-1)
        return self.diffusion.space.project(x, mask), mask

    def decode(self, x: torch.Tensor, mask: torch.Tensor) -> list[Molecule]:
        """States back to molecules: positions as they are, types by argmax of the feature channels."""
        types = x[..., 3:].argmax(-1).cpu().numpy()
        pos = x[..., :3].double().cpu().numpy()
        n = mask.sum(1).cpu().numpy()
        decoder = self.setting.atom_decoder
        return [Molecule([decoder[t] for t in types[k, : n[k]]], pos[k, : n[k]]) for k in range(len(n))]

    def forward(self, types: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Mean ε-prediction loss of a batch (used by the trainer, and through DDP)."""
        x, mask = self.encode(types, positions)
        return self.diffusion.denoising_loss(self.denoiser, x, mask).mean()

    def sample_n_atoms(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Atom counts drawn from the training histogram, ``(n,)``."""
        return torch.multinomial(self.n_atoms_hist.cpu(), n, replacement=True, generator=generator)

    @torch.no_grad()
    def sample(self, n: int, n_sampling_steps: int | None = None, generator: torch.Generator | None = None,
               n_atoms: torch.Tensor | None = None, callback=None, cond: torch.Tensor | None = None,
               denoiser: nn.Module | None = None, solver: Solver = ANCESTRAL) -> list[Molecule]:
        """Draw ``n`` molecules with ``n_sampling_steps`` reverse steps (``None``: all T) of ``solver``.

        ``cond (n, cond_dim)`` conditions a conditioned model; ``denoiser`` replaces the model's own
        (e.g. a guided one wrapping it).
        """
        return self.decode(*self.sample_states(n, n_sampling_steps, generator, n_atoms, callback, cond, denoiser,
                                               solver))

    @torch.no_grad()
    def sample_states(self, n: int, n_sampling_steps: int | None = None, generator: torch.Generator | None = None,
                      n_atoms: torch.Tensor | None = None, callback=None, cond: torch.Tensor | None = None,
                      denoiser: nn.Module | None = None, solver: Solver = ANCESTRAL) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample` before decoding: states ``x (n, N_max, 3+F)`` and ``mask (n, N_max)``."""
        device = self.n_atoms_hist.device
        if n_atoms is None:
            n_atoms = self.sample_n_atoms(n, generator)
        n_max = int(n_atoms.max())
        mask = (torch.arange(n_max).unsqueeze(0) < n_atoms.cpu().unsqueeze(1)).to(device)
        x = self.diffusion.sample(denoiser or self.denoiser, mask, self.n_channels, n_sampling_steps, cond=cond,
                                  generator=generator, callback=callback, dtype=self.n_atoms_hist.dtype, solver=solver)
        return x, mask

    def sample_many(self, n: int, n_sampling_steps: int | None = None, generator: torch.Generator | None = None,
                    batch_size: int = 500, on_batch=None, solver: Solver = ANCESTRAL) -> list[Molecule]:
        """:meth:`sample` in batches of at most ``batch_size``; ``on_batch(k)`` after each batch of k."""
        molecules: list[Molecule] = []
        while len(molecules) < n:
            batch = self.sample(min(batch_size, n - len(molecules)), n_sampling_steps, generator, solver=solver)
            molecules += batch
            if on_batch:
                on_batch(len(batch))
        return molecules

    def reconfigured(self, config: PriorConfig) -> MoleculeDiffusion:
        """This model's untrained network under ``config`` (:class:`common.conditioning.Conditionable`;
        ``with_condition(cond_dim, cond_gate=…)``, the gate as in :class:`MoleculeDenoiser`)."""
        return MoleculeDiffusion(config, self.n_atoms_hist)

    # -- shipping --------------------------------------------------------------------------------

    def export(self) -> dict:
        """What a weights file holds: config, atom-count histogram and weights."""
        return {"kind": self.kind, "config": asdict(self.config), "state_dict": self.state_dict()}

    @classmethod
    def from_metadata(cls, tree: dict) -> MoleculeDiffusion:
        """The untrained network a weights tree describes (see :mod:`common.exports`)."""
        return cls(typed(PriorConfig, typed_field(tree, "config"), "config"), torch.zeros(tensor_shape(tree, "n_atoms_hist")))


