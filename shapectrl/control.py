"""Class and attribute control of the shape prior: RGDM, CTRL and the label-as-input baseline — the
shapes' side of :mod:`common.control` (objectives and batches are written once for both domains).

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

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from torch import nn

from common.control import (
    ConditionedDenoising,
    ControlConfig,
    LabelledBatches,
    PayoffBatches,
    RewardObjective,
    ScoredPool,
    TargetBatches,
)
from common.diffusion import ANCESTRAL, Solver
from common.exports import errors_naming, load_module, typed_field
from common.guidance import classifier_free, window_shares
from common.selection import redraw_refused
from shapectrl.classifier import ShapeClassifier
from shapectrl.conditions import DEFAULT_ATTRIBUTES, ShapeConditions
from shapectrl.prior import ShapeBatches, ShapeDiffusion, random_subset
from shapectrl.reward import ShapeReward


@dataclass
class ShapeControlConfig(ControlConfig):
    """Hyper-parameters of a control run (the ``control`` record of its weights):
    :class:`common.control.ControlConfig` with the shapes' defaults and their targets' settings."""

    methods = ("rgdm", "ctrl", "cond")
    proposals = ("prior", "data")

    method: str = "rgdm"
    sampling_steps: int = 20
    grad_steps: int = 4
    pool_size: int = 4000
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    p_class: float = 0.8  # probability that a training target conditions on the class
    p_attribute: float = 0.25  # ... on each attribute that applies to the class
    tolerance: float = 0.1  # attribute likelihood width, in training standard deviations
    neighbours: int = 0  # > 0: first give the prior's network a local branch over this many neighbours
    target_classes: tuple[str, ...] = ()  # targets of these classes alone, the class always conditioned (empty: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attributes, self.target_classes = tuple(self.attributes), tuple(self.target_classes)
        if self.target_classes and self.p_class != 1:
            raise ValueError(f"p_class: targets of target_classes always condition on their class (p_class 1), got "
                             f"{self.p_class}")


@dataclass
class ShapePool(ScoredPool):
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

    def __len__(self) -> int:
        return len(self.points)

    @classmethod
    @torch.no_grad()
    def sample(cls, prior: ShapeDiffusion, reward: ShapeReward, size: int, sampling_steps: int,
               generator: torch.Generator | None = None, batch_size: int = 64) -> ShapePool:
        """Draw ``size`` clouds of the prior's training size and score them."""
        t0 = time.perf_counter()
        with click.progressbar(length=size, label="pool of prior samples", file=sys.stderr) as bar:
            points = prior.sample_many(size, None, sampling_steps, generator, batch_size, on_batch=bar.update)
        return cls(points, torch.empty(0), sampling_steps, time.perf_counter() - t0).scored(reward, batch_size)

    @classmethod
    def from_data(cls, points: torch.Tensor, reward: ShapeReward, n_points: int, batch_size: int = 256) -> ShapePool:
        """The training clouds ``(M, P, 3)`` as a pool, scored on their first ``n_points`` points (the
        size attributes are measured at; the points are in random order)."""
        scored = cls(points[:, :n_points], torch.empty(0), 0, 0.0).scored(reward, batch_size)
        return cls(points, scored.scores, 0, scored.seconds)

    def scored(self, reward: ShapeReward, batch_size: int = 256) -> ShapePool:
        """The same clouds with ``reward``'s scores."""
        device = reward.columns.device
        return self.rescored(lambda rows: reward.scores(self.points[rows].to(device)), batch_size)

    def groups(self, sizes: list[int]) -> dict[int, torch.Tensor]:
        """Every cloud serves every size up to its own (a random subset of its points)."""
        too_large = [n for n in sizes if n > self.points.shape[1]]
        if too_large:
            raise ValueError(f"the pool's clouds have {self.points.shape[1]} points, targets ask for {too_large[0]}")
        return dict.fromkeys(sizes, torch.arange(len(self.points)))

    def take(self, rows: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor]:
        """``(points (B, n, 3),)``: a random ``n`` of each picked cloud's points."""
        return (random_subset(self.points[rows], int(sizes.max()), generator),)


class ShapeTargets:
    """Training targets from the labelled split: ``labels (M,)`` (class indices) and ``values (M, A)``
    (attributes), with a random subset of each target's columns conditioned (:meth:`ShapeConditions.random_mask`).
    With ``config.target_classes``, only the shapes of those classes give targets: ``rows (M',)``, their indices
    in the split (what :meth:`draw` numbers)."""

    def __init__(self, conditions: ShapeConditions, labels: torch.Tensor, values: torch.Tensor,
                 config: ShapeControlConfig):
        self.conditions, self.config = conditions, config
        unknown = [c for c in config.target_classes if c not in conditions.classes]
        if unknown:
            raise ValueError(f"target class {unknown[0]!r} is not in the data (it has {', '.join(conditions.classes)})")
        wanted = [conditions.classes.index(c) for c in config.target_classes] or range(len(conditions.classes))
        self.rows = torch.nonzero(torch.isin(labels, torch.tensor(list(wanted)))).squeeze(1)
        self.labels = labels[self.rows]
        self.y = torch.cat([self.labels.float().unsqueeze(1), values[self.rows].float()], dim=1)

    def __len__(self) -> int:
        return len(self.labels)

    def draw(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y (B, 1 + A), y_mask (B, 1 + A))`` of the targets ``rows (B,)``."""
        mask = self.conditions.random_mask(self.labels[rows], self.config.p_class, self.config.p_attribute, generator)
        return self.y[rows], mask

    def batches(self, batch_size: int, n_points: int, seed: int = 0) -> TargetBatches:
        """Step -> ``(sizes (B,) = n_points, y, y_mask)`` in shuffled epochs over the labelled split, each target
        on ``config.rollouts_per_target`` consecutive rows."""
        sizes = torch.full((len(self),), n_points, dtype=torch.long)
        return TargetBatches(sizes, lambda rows, _, g: self.draw(rows, g), batch_size, seed, self.config.rollouts_per_target)


@dataclass
class ControlledShapes:
    """A conditioned shape model with its conditions: ``sample(y, y_mask)`` draws clouds for targets."""

    model: ShapeDiffusion
    conditions: ShapeConditions
    control: dict

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> ControlledShapes:
        """A controlled model from a weights file of ``shapectrl train control`` (one-line
        :class:`~common.weights.WeightsError` otherwise)."""
        model, tree = load_module(path, [ShapeDiffusion], map_location)
        with errors_naming(path):
            if "conditions" not in tree:
                raise ValueError("not a controlled shape model (no conditions; train one with 'shapectrl train control')")
            conditions = ShapeConditions.from_dict(typed_field(tree, "conditions", dict))
            if conditions.cond_dim != model.config.cond_dim:
                raise ValueError(f"conditions: they encode {conditions.cond_dim} numbers, the network reads "
                                 f"{model.config.cond_dim}")
            return cls(model, conditions, typed_field(tree, "control", dict, {}))

    @property
    def tolerance(self) -> float:
        """The attribute likelihood width the model was trained with, in training standard deviations."""
        return self.control.get("tolerance", ShapeControlConfig.tolerance)

    @property
    def target_classes(self) -> tuple[str, ...]:
        """The classes the model was trained for alone (``train control --target-classes``; empty: every class)."""
        return tuple(self.control.get("target_classes", ()))

    def check_targets(self, y: torch.Tensor, y_mask: torch.Tensor) -> None:
        """A clear error for targets ``(B, 1 + A)`` outside the classes the model was trained for."""
        if not self.target_classes:
            return
        wanted = torch.tensor([self.conditions.classes.index(c) for c in self.target_classes])
        if not (y_mask[:, 0].cpu().all() and torch.isin(y[:, 0].cpu().long(), wanted).all()):
            raise ValueError(f"this model was trained for targets of class {' or '.join(self.target_classes)} alone "
                             "(give one of them as the class)")

    def reward(self, classifier: nn.Module, tolerance: float | None = None) -> ShapeReward:
        """The reward on this model's targets: ``classifier``'s log-probability of the class plus attribute
        likelihoods ``tolerance`` wide (None: the width the model was trained with)."""
        return ShapeReward(classifier, self.conditions, tolerance or self.tolerance)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, y_mask: torch.Tensor, n_points: int | None = None,
               n_sampling_steps: int | None = 50, generator: torch.Generator | None = None,
               batch_size: int = 16, on_batch=None, guidance_scale: float = 1.0,
               guidance_window: tuple[int, int] | None = None, solver: Solver = ANCESTRAL) -> torch.Tensor:
        """One cloud per target row ``y, y_mask (B, 1 + A)`` -> ``(B, n_points, 3)`` normalised, on the CPU.
        ``guidance_scale`` w ≠ 1 samples with classifier-free guidance (:class:`common.guidance.ConditionScaled`)
        on the diffusion steps lo < t ≤ hi of ``guidance_window`` (None: all of them); ``solver``: the steps'
        grid and order."""
        self.check_targets(y, y_mask)
        cond = self.conditions.encode(y, y_mask)
        denoiser = classifier_free(self.model.denoiser, guidance_scale,
                                   window_shares(guidance_window, self.model.diffusion.n_steps))
        return self.model.sample_many(len(y), n_points, n_sampling_steps, generator, batch_size, on_batch, cond=cond,
                                      denoiser=denoiser, solver=solver)

    @torch.no_grad()
    def sample_in_class(self, y: torch.Tensor, y_mask: torch.Tensor, classifier: ShapeClassifier, rounds: int,
                        on_batch=None, **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sample` (``options``: its keywords), each cloud of a class target that ``classifier`` (the reward's,
        never the evaluator) puts in another class drawn again, up to ``rounds`` times
        (:func:`common.selection.redraw_refused`): a draw of the model restricted to its target class. ``on_batch``
        reports the first draw's progress. ``-> (clouds (B, N, 3)`` normalised, on the CPU, ``draws (B,)``,
        ``in_class (B,))``."""
        unknown = [c for c in self.conditions.classes if c not in classifier.classes]
        if unknown:
            raise ValueError(f"the class check's classifier does not know class {unknown[0]!r} "
                             f"(it knows {', '.join(classifier.classes)})")
        columns = torch.tensor([classifier.classes.index(c) for c in self.conditions.classes])
        wanted = columns[torch.where(y_mask[:, 0], y[:, 0], 0).long().cpu()]
        checked = y_mask[:, 0].cpu()

        def draw(rows: torch.Tensor) -> torch.Tensor:
            return self.sample(y[rows], y_mask[rows], on_batch=on_batch if len(rows) == len(y) else None, **options)

        def accept(clouds: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return ~checked[rows] | classifier.predicts(clouds, wanted[rows])

        return redraw_refused(draw, accept, len(y), rounds)


def target_class(conditions: ShapeConditions, y: torch.Tensor, y_mask: torch.Tensor) -> str | None:
    """The class of targets ``y, y_mask (B, 1 + A)`` when every row asks for that one class, with or without
    attributes (the targets a model of :func:`with_class_models` draws), else None."""
    if not y_mask[:, 0].all():
        return None
    classes = y[:, 0].long().unique()
    return conditions.classes[int(classes)] if len(classes) == 1 else None


def with_class_models(general: ControlledShapes, paths: Mapping[str, str | Path]) -> dict[str, ControlledShapes]:
    """The models of ``paths`` ({class: file of ``train control --target-classes CLASS``}), each checked against
    ``general``, the model of every other target: a class it knows, trained for that class alone, on the same
    conditions, in the same normalisation and diffusion (one-line :class:`~common.weights.WeightsError` naming the
    file otherwise)."""
    models = {}
    for class_name, path in paths.items():
        if class_name not in general.conditions.classes:
            raise ValueError(f"{class_name!r} is not a class of the model of the other targets (it knows "
                             f"{', '.join(general.conditions.classes)})")
        model = ControlledShapes.load(path)
        with errors_naming(path):
            if model.target_classes != (class_name,):
                raise ValueError(f"trained for targets of {', '.join(model.target_classes) or 'every class'}, not of "
                                 f"{class_name} alone")
            if model.conditions.to_dict() != general.conditions.to_dict():
                raise ValueError("its conditions (classes, attributes, their statistics) differ from the model of the "
                                 "other targets")
            if (model.model.normalisation, model.model.diffusion.n_steps) != (
                    general.model.normalisation, general.model.diffusion.n_steps):
                raise ValueError("trained in another normalisation or diffusion than the model of the other targets")
        models[class_name] = model
    return models


def make_objective(config: ShapeControlConfig, prior: ShapeDiffusion, reward: ShapeReward, points: torch.Tensor,
                   targets: ShapeTargets, batch_size: int, n_points: int, seed: int = 0,
                   pool_path: Path | None = None) -> tuple[nn.Module, object]:
    """The objective and batch source of ``config``: ``points (M, P, 3)`` are the labelled training
    clouds (normalised) behind ``targets``. RGDM with the prior as proposal samples its pool once and
    keeps it at ``pool_path`` (reused when there); with the data as proposal it scores ``points``. With
    ``config.neighbours`` the trained copy first grows a local branch (:meth:`ShapeDiffusion.with_neighbours`);
    CTRL's KL and the pool stay the prior's."""
    start = prior.with_neighbours(config.neighbours) if config.neighbours else prior
    model = start.with_condition(reward.conditions.cond_dim)
    if config.method == "cond":
        labelled = ShapeBatches(points[targets.rows], batch_size, n_points, torch.arange(len(targets)), seed)
        return (ConditionedDenoising(model, reward.conditions, config),
                LabelledBatches(labelled, targets.draw, seed))
    target_batches = targets.batches(batch_size, n_points, seed)
    if config.method == "ctrl":
        return RewardObjective(model, prior, reward, reward.conditions, config), target_batches
    if config.proposal == "data":
        pool = ShapePool.from_data(points, reward, n_points)
    elif pool_path is not None and Path(pool_path).exists():
        pool = ShapePool.load(pool_path)
    else:
        pool = ShapePool.sample(prior, reward, config.pool_size, config.pool_steps, torch.Generator().manual_seed(seed))
        if pool_path is not None:
            pool.save(pool_path)
    return (ConditionedDenoising(model, reward.conditions, config, {"pool_seconds": round(pool.seconds, 1)}),
            PayoffBatches(pool, reward, target_batches, config.temperature, config.candidates))
