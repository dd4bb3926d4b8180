"""Class and attribute control of the shape prior: RGDM, CTRL and the label-as-input baseline.

All three train a conditioned copy of the prior (:meth:`ShapeDiffusion.with_condition`, condition
zero-initialised) on targets y drawn from the training split's labels — a shape's class and its
measured attributes, with a random subset of them conditioned (:meth:`ShapeConditions.random_mask`):

* ``rgdm`` — RGDM with a fixed proposal pool (as for molecules, :mod:`molctrl.payoff`): M clouds are
  scored once; for each target a pool cloud is resampled ∝ exp(r(x; y)/τ)
  (:func:`common.rgdm.payoff_resample`), an exact draw of the pay-off distribution
  q(x | y) ∝ p(x)·exp(r(x; y)/τ) up to the pool's finiteness, and the model fits it by the denoising
  loss with y as condition. The pool is either the prior's own samples (``proposal="prior"``, p = p_pre)
  or the unlabelled training clouds the prior was fitted to (``proposal="data"``, p = p_data; only
  the reward reads them, never their labels);
* ``ctrl`` — KL-regularised reward fine-tuning through the sampler (:func:`common.ctrl.ctrl_loss`);
* ``cond`` — the baseline: the denoising loss on the labelled training clouds with their own labels
  as condition (the same targets, the same steps).

With r = log p̂(y | x) (:class:`shapectrl.reward.ShapeReward`) and τ = α = 1, RGDM and CTRL aim at
p_pre(x)·p̂(y | x), the prior's own conditional; the baseline at the data's conditional.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import torch
from torch import nn

from common.ctrl import ctrl_loss
from common.exports import (
    errors_naming,
    load_fields,
    load_module,
    save_fields,
    typed_field,
)
from common.guidance import classifier_free
from common.rgdm import payoff_resample
from common.training import EpochSampler
from shapectrl.conditions import DEFAULT_ATTRIBUTES, ShapeConditions
from shapectrl.prior import ShapeBatches, ShapeDiffusion, random_subset
from shapectrl.reward import ShapeReward

METHODS = ("rgdm", "ctrl", "cond")
PROPOSALS = ("prior", "data")


@dataclass
class ControlConfig:
    """Hyper-parameters of a control run (the ``control`` record of its weights)."""

    method: str = "rgdm"
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    p_class: float = 0.8  # probability that a training target conditions on the class
    p_attribute: float = 0.25  # ... on each attribute that applies to the class
    tolerance: float = 0.1  # attribute likelihood width, in training standard deviations
    temperature: float = 1.0  # RGDM's τ
    proposal: str = "prior"  # RGDM's pool: "prior" samples or the unlabelled training "data"
    pool_size: int = 4000  # RGDM: prior clouds in the pool
    pool_steps: int = 50  # RGDM: sampling steps of the pool
    sampling_steps: int = 20  # CTRL: sampler steps of a rollout
    alpha: float = 1.0  # CTRL's KL weight
    grad_steps: int = 4  # CTRL: reparameterised final transitions, drawn uniformly in [1, grad_steps]
    cond_lr_scale: float = 10.0  # learning rate of the condition embedding / that of the rest
    train_backbone: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (expected one of {', '.join(METHODS)})")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r} (expected one of {', '.join(PROPOSALS)})")
        self.attributes = tuple(self.attributes)


@dataclass
class ShapePool:
    """M clouds ``points (M, P, 3)`` (normalised frame) with their reward scores ``(M, K + A)``
    (:meth:`ShapeReward.scores`); ``sampling_steps`` (0: not sampled, the data) and ``seconds`` say
    how they were made."""

    kind = "shapectrl.pool"  # what its weights file holds (common.exports.save_fields)

    points: torch.Tensor
    scores: torch.Tensor
    sampling_steps: int
    seconds: float

    def __post_init__(self) -> None:
        if self.points.dim() != 3 or self.points.shape[-1] != 3:
            raise ValueError(f"points: expected (M, P, 3), got {tuple(self.points.shape)}")
        if self.scores.numel() and len(self.scores) != len(self.points):
            raise ValueError(f"scores: expected one row per cloud ({len(self.points)}), got {len(self.scores)}")

    @classmethod
    @torch.no_grad()
    def sample(cls, prior: ShapeDiffusion, reward: ShapeReward, size: int, sampling_steps: int,
               generator: torch.Generator | None = None, batch_size: int = 64) -> ShapePool:
        """Draw ``size`` clouds of the prior's training size and score them."""
        t0 = time.perf_counter()
        with click.progressbar(length=size, label="pool of prior samples", file=sys.stderr) as bar:
            points = prior.sample_many(size, None, sampling_steps, generator, batch_size, on_batch=bar.update)
        pool = cls(points, torch.empty(0), sampling_steps, time.perf_counter() - t0)
        return pool.scored(reward, batch_size)

    @classmethod
    def from_data(cls, points: torch.Tensor, reward: ShapeReward, n_points: int, batch_size: int = 256) -> ShapePool:
        """The training clouds ``(M, P, 3)`` as a pool, scored on their first ``n_points`` points (the
        size attributes are measured at; the points are in random order)."""
        return cls(points, torch.empty(0), 0, 0.0).scored(reward, batch_size, n_points)

    @torch.no_grad()
    def scored(self, reward: ShapeReward, batch_size: int = 256, n_points: int | None = None) -> ShapePool:
        """The same clouds scored by ``reward`` on their first ``n_points`` points (default all); the
        scoring time is added to ``seconds``."""
        t0 = time.perf_counter()
        device = reward.columns.device
        scores = torch.cat([reward.scores(self.points[i : i + batch_size, :n_points].to(device)).cpu()
                            for i in range(0, len(self.points), batch_size)])
        return ShapePool(self.points, scores, self.sampling_steps, self.seconds + time.perf_counter() - t0)

    def save(self, path: str | Path) -> None:
        save_fields(self, path)

    @classmethod
    def load(cls, path: str | Path) -> ShapePool:
        return load_fields(cls, path)


class ShapeTargets:
    """Training targets from the labelled split: ``labels (M,)`` (class indices) and ``values (M, A)``
    (attributes); ``draw(rows, generator) -> (y (B, 1 + A), y_mask (B, 1 + A))``."""

    def __init__(self, conditions: ShapeConditions, labels: torch.Tensor, values: torch.Tensor, config: ControlConfig):
        self.conditions, self.config = conditions, config
        self.y = torch.cat([labels.float().unsqueeze(1), values.float()], dim=1)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def draw(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.conditions.random_mask(self.labels[rows], self.config.p_class, self.config.p_attribute, generator)
        return self.y[rows], mask


class LabelledBatches:
    """The baseline's batches: step -> ``(points (B, n, 3), y, y_mask)``, training clouds with their own targets."""

    def __init__(self, points: torch.Tensor, targets: ShapeTargets, batch_size: int, n_points: int, seed: int = 0):
        self.clouds = ShapeBatches(points, batch_size, n_points, torch.arange(len(points)), seed)
        self.targets, self.seed, self.n_points = targets, seed, n_points

    def __len__(self) -> int:
        return len(self.targets)

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        points, rows = self.clouds(step, rank, world_size)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 17 + rank)
        return (points, *self.targets.draw(rows, g))


class TargetBatches:
    """CTRL's batches: step -> ``(y (B, 1 + A), y_mask)`` in shuffled epochs over the labelled split."""

    def __init__(self, targets: ShapeTargets, batch_size: int, n_points: int, seed: int = 0):
        self.sampler = EpochSampler(len(targets), batch_size, seed)
        self.targets, self.seed, self.n_points = targets, seed, n_points

    def __len__(self) -> int:
        return len(self.targets)

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(self.sampler.indices(step, rank, world_size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 17 + rank)
        return self.targets.draw(rows, g)


class PayoffBatches:
    """RGDM's batches: step -> ``(points (B, n, 3), y, y_mask, ess (B,))``: for each target of
    :class:`TargetBatches` a pool cloud resampled by softmax(r/τ), a random ``n`` of its points when it
    has more; ess = 1/Σ w² of those weights."""

    def __init__(self, pool: ShapePool, reward: ShapeReward, targets: TargetBatches, temperature: float = 1.0):
        self.pool, self.reward, self.targets, self.temperature = pool, reward, targets, temperature
        self.n_points = targets.n_points

    def __len__(self) -> int:
        return len(self.targets)

    @torch.no_grad()
    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        y, y_mask = self.targets(step, rank, world_size)
        g = torch.Generator().manual_seed(self.targets.seed * 7_919 + step * 31 + rank + 1)
        r = self.reward.log_likelihood(self.pool.scores.unsqueeze(0), y.unsqueeze(1), y_mask.unsqueeze(1))
        rows, ess = payoff_resample(r, self.temperature, g)
        return random_subset(self.pool.points[rows], self.n_points, g), y, y_mask, ess


class ConditionedDenoising(nn.Module):
    """The ε-prediction loss of clouds with targets as condition: the baseline on labelled data
    (:class:`LabelledBatches`), RGDM on pay-off resampled pool clouds (:class:`PayoffBatches`)."""

    def __init__(self, prior: ShapeDiffusion, conditions: ShapeConditions, config: ControlConfig,
                 record: dict | None = None):
        super().__init__()
        self.model = prior.with_condition(conditions.cond_dim)
        self.conditions, self.config = conditions, config
        self.record = record or {}
        self.stats: dict[str, float] = {}

    def parameter_groups(self) -> list[dict]:
        return self.model.parameter_groups(self.config.cond_lr_scale, self.config.train_backbone)

    def forward(self, points: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                ess: torch.Tensor | None = None) -> torch.Tensor:
        if ess is not None:
            self.stats = {"ess": ess.mean().item()}
        cond = self.conditions.encode(y, y_mask)
        return self.model.diffusion.denoising_loss(self.model.denoiser, points, self.model.full_mask(points), cond).mean()

    def export(self) -> dict:
        return controlled_export(self.model, self.conditions, self.config, self.record)


class CTRLObjective(nn.Module):
    """CTRL's loss −E[r(x; y)] + α Σ_t KL_t on rollouts of the conditioned model (:func:`common.ctrl.ctrl_loss`)."""

    def __init__(self, prior: ShapeDiffusion, reward: ShapeReward, config: ControlConfig, n_points: int,
                 record: dict | None = None):
        super().__init__()
        self.model = prior.with_condition(reward.conditions.cond_dim)
        self.prior = copy.deepcopy(prior).requires_grad_(False).eval()
        self.reward, self.config, self.n_points = reward, config, n_points
        self.record = record or {}
        self.stats: dict[str, float] = {}

    def parameter_groups(self) -> list[dict]:
        return self.model.parameter_groups(self.config.cond_lr_scale, self.config.train_backbone)

    def forward(self, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        cfg, model = self.config, self.model
        mask = torch.ones(len(y), self.n_points, dtype=torch.bool, device=y.device)
        grad_steps = int(torch.randint(1, cfg.grad_steps + 1, (1,)))
        loss, self.stats = ctrl_loss(model.diffusion, model.denoiser, self.prior.denoiser, self.reward, mask, 3, y,
                                     y_mask, self.reward.conditions.encode(y, y_mask), alpha=cfg.alpha,
                                     n_sampling_steps=cfg.sampling_steps, grad_steps=grad_steps)
        return loss

    def export(self) -> dict:
        return controlled_export(self.model, self.reward.conditions, self.config, self.record)


def controlled_export(model: ShapeDiffusion, conditions: ShapeConditions, config: ControlConfig, record: dict) -> dict:
    """A controlled model's weights file: the conditioned prior, its conditions and how it was trained."""
    return model.export() | {"conditions": conditions.to_dict(), "control": asdict(config) | record}


@dataclass
class ControlledShapes:
    """A conditioned shape model with its conditions: ``sample(y, y_mask)`` draws clouds for targets."""

    model: ShapeDiffusion
    conditions: ShapeConditions
    control: dict

    @classmethod
    def from_export(cls, payload: dict) -> ControlledShapes:
        return cls._with_conditions(ShapeDiffusion.from_export(payload), payload)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> ControlledShapes:
        """A controlled model from a weights file of ``shapectrl train control`` (one-line
        :class:`~common.weights.WeightsError` otherwise)."""
        model, tree = load_module(path, [ShapeDiffusion], map_location)
        with errors_naming(path):
            return cls._with_conditions(model, tree)

    @classmethod
    def _with_conditions(cls, model: ShapeDiffusion, tree: dict) -> ControlledShapes:
        if "conditions" not in tree:
            raise ValueError("not a controlled shape model (no conditions; train one with 'shapectrl train control')")
        conditions = ShapeConditions.from_dict(typed_field(tree, "conditions", dict))
        if conditions.cond_dim != model.config.cond_dim:
            raise ValueError(f"conditions: they encode {conditions.cond_dim} numbers, the network reads "
                             f"{model.config.cond_dim}")
        return cls(model, conditions, typed_field(tree, "control", dict, {}))

    @torch.no_grad()
    def sample(self, y: torch.Tensor, y_mask: torch.Tensor, n_points: int | None = None,
               n_sampling_steps: int | None = 50, generator: torch.Generator | None = None,
               batch_size: int = 16, on_batch=None, guidance_scale: float = 1.0) -> torch.Tensor:
        """One cloud per target row ``y, y_mask (B, 1 + A)`` -> ``(B, n_points, 3)`` normalised, on the CPU.
        ``guidance_scale`` w ≠ 1 samples with classifier-free guidance (:class:`common.guidance.ConditionScaled`)."""
        cond = self.conditions.encode(y, y_mask)
        return self.model.sample_many(len(y), n_points, n_sampling_steps, generator, batch_size, on_batch, cond=cond,
                                      denoiser=classifier_free(self.model.denoiser, guidance_scale))


def make_objective(config: ControlConfig, prior: ShapeDiffusion, reward: ShapeReward, points: torch.Tensor,
                   targets: ShapeTargets, batch_size: int, n_points: int, seed: int = 0,
                   pool_path: Path | None = None) -> tuple[nn.Module, object]:
    """The objective and batch source of ``config``: ``points (M, P, 3)`` are the labelled training
    clouds (normalised) behind ``targets``. RGDM with the prior as proposal samples its pool once and
    keeps it at ``pool_path`` (reused when there); with the data as proposal it scores ``points``."""
    if config.method == "cond":
        return ConditionedDenoising(prior, reward.conditions, config), LabelledBatches(points, targets, batch_size,
                                                                                       n_points, seed)
    target_batches = TargetBatches(targets, batch_size, n_points, seed)
    if config.method == "ctrl":
        return CTRLObjective(prior, reward, config, n_points), target_batches
    if config.proposal == "data":
        pool = ShapePool.from_data(points, reward, n_points)
    elif pool_path is not None and Path(pool_path).exists():
        pool = ShapePool.load(pool_path)
    else:
        pool = ShapePool.sample(prior, reward, config.pool_size, config.pool_steps, torch.Generator().manual_seed(seed))
        if pool_path is not None:
            pool.save(pool_path)
    record = {"pool_seconds": round(pool.seconds, 1)}
    return (ConditionedDenoising(prior, reward.conditions, config, record),
            PayoffBatches(pool, reward, target_batches, config.temperature))
