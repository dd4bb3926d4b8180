"""Turning a prior into a conditioned generator, written once for both domains: the hyper-parameters,
batches of targets, pay-off batches from a scored pool, and the two objectives the trainer fits.

* :class:`RewardObjective` — CTRL, trajectory- or step-level RGDM, or DDPO on batches of targets;
* :class:`ConditionedDenoising` — the denoising loss with targets as the condition: the label-as-input
  baseline (EDM-cond) on labelled data, and RGDM on pay-off resampled pool samples.

A domain brings what is its own: its targets (a ``draw`` function), its pool (:class:`ScoredPool`), the
conditioned copy of its prior (:meth:`common.conditioning.Conditionable.with_condition`, a model with
``diffusion``, ``denoiser``, ``n_channels``, ``encode(*data) -> (x, mask)`` and ``export()``), and its
conditions (``encode(y, y_mask) -> c``, ``to_dict()``).

Batches of targets are ``(sizes (B,), y (B, P), y_mask (B, P))``: the set size a sample for each target
has (atoms of a molecule, points of a cloud), the target and which of its columns are conditioned.
Every batch is a function of the step (:func:`common.training.step_generator`), so a resumed run repeats it.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar, Self

import torch
from torch import nn

from common.ctrl import ctrl_loss
from common.ddpo import ddpo_loss, sample_trajectories
from common.exports import load_fields, save_fields
from common.rewards import Reward
from common.rgdm import payoff_resample, rgdm_step_loss, rgdm_trajectory_loss
from common.rollout import KL_FORMS
from common.training import EpochSampler, step_generator

REWARD_METHODS = ("ctrl", "rgdm", "rgdm-step", "ddpo")  # the methods of RewardObjective


@dataclass
class ControlConfig:
    """Hyper-parameters of a control run (see :mod:`common.ctrl`, :mod:`common.rgdm`, :mod:`common.ddpo`);
    each domain subclasses it with its targets' settings and its own defaults."""

    record_key: ClassVar[str] = "control"  # where a weights file keeps the record
    methods: ClassVar[tuple[str, ...]] = (*REWARD_METHODS, "cond")
    proposals: ClassVar[tuple[str, ...]] = ("prior", "data", "model")

    method: str = "ctrl"
    sampling_steps: int = 25  # respaced steps of training rollouts
    alpha: float = 1.0  # CTRL's KL weight
    kl: str = "chain"  # CTRL's KL: "chain" (the sampler's own steps) or "continuous" (common.rollout)
    kl_cap: float | None = None  # CTRL: trajectories with a larger KL are left out of the loss (common.ctrl)
    grad_steps: int = 8  # CTRL: reparameterised final transitions, drawn uniformly in [1, grad_steps]
    score_early: bool = False  # CTRL: the score-function term of the earlier transitions too (common.ctrl)
    temperature: float = 1.0  # RGDM's τ
    proposal: str = "prior"  # RGDM: a pool of prior samples ("prior") or of the unlabelled data ("data"), or
    # the model's rollouts ("model"; step-level RGDM: its states)
    pool_size: int = 10_000  # prior proposals: samples in the pool
    pool_steps: int = 50  # prior proposals: sampling steps of the pool
    candidates: int | None = None  # pool proposals: pool samples weighed per target (None: all of its size)
    samples_per_target: int = 4  # model proposals: rollouts per target, their weights normalised together;
    # CTRL with score_early: rollouts per target, each one's baseline the mean return of the others
    radius: float = 0.5  # step-level RGDM's ρ
    train_steps: int = 4  # step-level RGDM and DDPO: transitions trained per trajectory
    clip: float = 1e-4  # DDPO's ratio clip
    cond_lr_scale: float = 10.0  # learning rate of the condition embedding / that of the rest
    train_backbone: bool = True  # False: the condition embedding alone is trained

    def __post_init__(self) -> None:
        for name, value, allowed in (("method", self.method, self.methods), ("proposal", self.proposal, self.proposals),
                                     ("KL form", self.kl, KL_FORMS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")

    @property
    def rollouts_per_target(self) -> int:
        """Consecutive rows of a target batch that share one target (:class:`TargetBatches` ``repeats``):
        ``samples_per_target`` where the loss compares rollouts of one target (RGDM with the model's
        rollouts as proposals, CTRL's score-function baseline), else 1."""
        grouped = (self.method == "rgdm" and self.proposal == "model") or (self.method == "ctrl" and self.score_early)
        return self.samples_per_target if grouped else 1

    @classmethod
    def from_options(cls, options: Mapping, **values) -> Self:
        """The config of a command's parsed options (every field named as an option), then ``values``."""
        return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options} | values)

    def record(self, **extra) -> dict:
        """What a weights file keeps under :attr:`record_key`: the fields, and ``extra`` (e.g. pool seconds)."""
        return asdict(self) | extra


def controlled_export(model: nn.Module, conditions, config: ControlConfig, record: dict | None = None) -> dict:
    """A conditioned model's weights file: the model, its conditions, and how it was trained."""
    return model.export() | {"conditions": conditions.to_dict(), config.record_key: config.record(**(record or {}))}


class TargetBatches:
    """Step -> ``(sizes (B,), y (B, P), y_mask (B, P))``: rows of a labelled set of ``sizes (M,)`` in shuffled
    epochs, each row's target drawn by ``draw(rows, sizes, generator) -> (y, y_mask)`` and repeated on
    ``repeats`` consecutive rows (samples per target)."""

    def __init__(self, sizes: torch.Tensor, draw: Callable[..., tuple[torch.Tensor, torch.Tensor]], batch_size: int,
                 seed: int = 0, repeats: int = 1):
        if batch_size % repeats:
            raise ValueError(f"batch size {batch_size} is not a multiple of {repeats} samples per target")
        self.sizes, self.draw, self.seed, self.repeats = sizes, draw, seed, repeats
        self.sampler = EpochSampler(len(sizes), batch_size // repeats, seed)

    def __len__(self) -> int:
        return len(self.sizes)

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        g = step_generator(self.seed, step, rank)
        rows = torch.from_numpy(self.sampler.indices(step, rank, world_size))
        sizes = self.sizes[rows]
        return tuple(v.repeat_interleave(self.repeats, dim=0) for v in (sizes, *self.draw(rows, sizes, g)))


class LabelledBatches:
    """The baseline's batches: step -> ``(*data, y, y_mask)``. ``data(step, rank, world_size)`` gives a
    batch whose last element ``labels`` is what ``draw(labels, generator) -> (y, y_mask)`` turns into its
    targets (e.g. the labels themselves and a random subset of them conditioned)."""

    def __init__(self, data: Callable[..., tuple[torch.Tensor, ...]], draw: Callable, seed: int = 0):
        self.data, self.draw, self.seed = data, draw, seed

    def __len__(self) -> int:
        return len(self.data)

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        *data, labels = self.data(step, rank, world_size)
        return (*data, *self.draw(labels, step_generator(self.seed, step, rank)))


class ScoredPool:
    """Mixin of a dataclass of M samples with ``scores`` (what the reward needs of each, ``(M, …)``),
    ``sampling_steps`` (0: not sampled, the data) and ``seconds`` (sampling and scoring time), saved as a
    weights file of its ``kind``. The domain gives ``__len__``, :meth:`groups` and :meth:`take`."""

    scores: torch.Tensor
    seconds: float

    def groups(self, sizes: list[int]) -> dict[int, torch.Tensor]:
        """For each set size a target may ask for, the pool rows that can serve it ``(M_n,)``."""
        raise NotImplementedError

    def take(self, rows: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The training data of pool rows ``(B,)`` for targets of ``sizes (B,)``."""
        raise NotImplementedError

    @torch.no_grad()
    def rescored(self, score: Callable[[slice], torch.Tensor], batch_size: int = 250) -> Self:
        """The same samples with the scores ``score(rows)`` gives each slice of rows (a pool serves any
        reward); the scoring time is added to ``seconds``."""
        t0 = time.perf_counter()
        scores = torch.cat([score(slice(i, i + batch_size)).cpu() for i in range(0, len(self), batch_size)])
        return replace(self, scores=scores, seconds=self.seconds + time.perf_counter() - t0)

    def save(self, path: str | Path) -> None:
        save_fields(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """A pool that :meth:`save` wrote, every field type-checked (one-line error otherwise)."""
        return load_fields(cls, path)


class PayoffBatches:
    """RGDM's batches: step -> ``(*data, y, y_mask)``, for each target of ``targets`` a pool sample of its
    size resampled by the pay-off weights softmax(r/τ) (:func:`common.rgdm.payoff_resample`); the mean
    ESS 1/Σ w² of those weights is in ``stats``.

    A likelihood reward's r(x_j; y) follows in closed form from each sample's cached scores
    (``reward.log_likelihood(scores, y, y_mask)``); any other reward's scores are r itself.
    ``candidates`` K: the weights of a target are computed on K samples drawn uniformly (with replacement)
    among the pool's samples of its size — importance resampling from K proposals, which tends to the
    full-pool pick as K grows and costs K instead of M per target. None: every sample of its size."""

    def __init__(self, pool: ScoredPool, reward: Reward, targets: TargetBatches, temperature: float = 1.0,
                 candidates: int | None = None):
        self.pool, self.reward, self.targets = pool, reward, targets
        self.temperature, self.candidates = temperature, candidates
        self.groups = pool.groups(targets.sizes.unique().tolist())
        self.stats: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.targets)

    def _candidates(self, sizes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``(B, K)`` pool rows of each target's size, −1 where a group is smaller than K."""
        groups = [self.groups[int(n)] for n in sizes]
        width = max(len(rows) for rows in groups) if self.candidates is None else self.candidates
        out = torch.full((len(groups), width), -1, dtype=torch.long)
        for k, rows in enumerate(groups):
            if len(rows) <= width:
                out[k, : len(rows)] = rows
            else:
                out[k] = rows[torch.randint(len(rows), (width,), generator=g)]
        return out

    @torch.no_grad()
    def pick(self, sizes: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """For each target of ``sizes (B,)``, ``y, y_mask (B, P)`` a pool row ``(B,)`` resampled by softmax(r/τ)
        over its candidates, and the ESS 1/Σ w² of those weights ``(B,)``."""
        candidates = self._candidates(sizes, generator)
        scores = self.pool.scores[candidates.clamp(min=0)]  # (B, K, …)
        if hasattr(self.reward, "log_likelihood"):
            r = self.reward.log_likelihood(scores, y.unsqueeze(1), y_mask.unsqueeze(1))
        else:
            r = scores
        picks, ess = payoff_resample(r.masked_fill(candidates < 0, float("-inf")), self.temperature, generator)
        return candidates.gather(1, picks.unsqueeze(1)).squeeze(1), ess

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        sizes, y, y_mask = self.targets(step, rank, world_size)
        g = step_generator(self.targets.seed, step, rank, "payoff")
        rows, ess = self.pick(sizes, y, y_mask, g)
        self.stats = {"ess": ess.mean().item()}
        return (*self.pool.take(rows, sizes, g), y, y_mask)


class ConditionedDenoising(nn.Module):
    """The ε-prediction loss with targets as the condition, on batches ``(*data, y, y_mask)``: the
    baseline on labelled data (:class:`LabelledBatches`), RGDM on pay-off resampled pool samples
    (:class:`PayoffBatches`). ``model`` is the conditioned copy being trained."""

    def __init__(self, model: nn.Module, conditions, config: ControlConfig, record: dict | None = None):
        super().__init__()
        self.model, self.conditions, self.config, self.record = model, conditions, config, record or {}

    def parameter_groups(self) -> list[dict]:
        return self.model.parameter_groups(self.config.cond_lr_scale, self.config.train_backbone)

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        *data, y, y_mask = batch
        x, mask = self.model.encode(*data)
        cond = self.conditions.encode(y, y_mask)
        return self.model.diffusion.denoising_loss(self.model.denoiser, x, mask, cond).mean()

    def export(self) -> dict:
        return controlled_export(self.model, self.conditions, self.config, self.record)


class RewardObjective(nn.Module):
    """The loss of one reward fine-tuning method (``config.method``: ctrl, rgdm with the model's rollouts
    as proposals, rgdm-step, ddpo) on a batch of targets ``(sizes, y, y_mask)``; ``model`` is the
    conditioned copy of ``prior`` being trained, the prior and the reward are frozen."""

    def __init__(self, model: nn.Module, prior: nn.Module, reward: Reward, conditions, config: ControlConfig,
                 record: dict | None = None):
        super().__init__()
        self.model = model
        self.prior = copy.deepcopy(prior).requires_grad_(False).eval()
        self.reward = reward.requires_grad_(False).eval()
        self.conditions, self.config, self.record = conditions, config, record or {}
        self.stats: dict[str, float] = {}  # the last batch's reward, KL or ESS, for the progress lines

    def parameter_groups(self) -> list[dict]:
        return self.model.parameter_groups(self.config.cond_lr_scale, self.config.train_backbone)

    def forward(self, sizes: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        cfg, model = self.config, self.model
        mask = torch.arange(int(sizes.max()), device=sizes.device).unsqueeze(0) < sizes.unsqueeze(1)
        args = (model.diffusion, model.denoiser, self.prior.denoiser, self.reward, mask, model.n_channels, y, y_mask,
                self.conditions.encode(y, y_mask))
        if cfg.method == "ctrl":
            grad_steps = int(torch.randint(1, cfg.grad_steps + 1, (1,)))
            loss, self.stats = ctrl_loss(*args, alpha=cfg.alpha, n_sampling_steps=cfg.sampling_steps,
                                         grad_steps=grad_steps, kl=cfg.kl, kl_cap=cfg.kl_cap,
                                         score_early=cfg.score_early, group_size=cfg.rollouts_per_target)
        elif cfg.method == "rgdm":
            loss, self.stats = rgdm_trajectory_loss(*args, temperature=cfg.temperature, group_size=cfg.rollouts_per_target,
                                                    n_sampling_steps=cfg.sampling_steps)
        elif cfg.method == "rgdm-step":
            loss, self.stats = rgdm_step_loss(*args, temperature=cfg.temperature, radius=cfg.radius,
                                              n_sampling_steps=cfg.sampling_steps, n_train_steps=cfg.train_steps)
        elif cfg.method == "ddpo":
            trajectories = sample_trajectories(model.diffusion, model.denoiser, mask, model.n_channels,
                                               cfg.sampling_steps, args[-1])
            rewards = self.reward(trajectories.x, mask, y, y_mask)
            steps = torch.randperm(len(trajectories.steps))[: cfg.train_steps].tolist()
            loss = ddpo_loss(model.diffusion, model.denoiser, trajectories, rewards, steps, cfg.clip)
            self.stats = {"reward": rewards.mean().item()}
        else:
            raise ValueError(f"{cfg.method!r} is not a reward objective (expected one of {', '.join(REWARD_METHODS)})")
        return loss

    def export(self) -> dict:
        return controlled_export(self.model, self.conditions, self.config, self.record)
