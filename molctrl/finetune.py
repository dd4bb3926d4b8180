"""Fine-tuning that turns the prior into a property-conditioned generator: the molecules' side of
:mod:`common.control` (its objectives and batches are written once for both domains).

* :class:`common.control.RewardObjective` — CTRL, trajectory- or step-level RGDM, or DDPO, on batches of
  targets ``(n_atoms (B,), y (B, 6), y_mask (B, 6))`` from :func:`target_batches`;
* :class:`PayoffScoreObjective` — step-level RGDM at noised unlabelled molecules, with targets drawn
  from the reward model's predictive at each molecule (:func:`common.rgdm.payoff_score_loss`);
* :class:`common.control.ConditionedDenoising` — the denoising loss with the labels as the condition:
  EDM-cond on labelled molecules, and RGDM on pay-off resampled pool molecules (:mod:`molctrl.payoff`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.control import (
    ConditionedDenoising,
    ControlConfig,
    LabelledBatches,
    PayoffBatches,
    RewardObjective,
    TargetBatches,
)
from common.exports import conform, errors_naming, load_module, typed_field
from common.guidance import GuidedDenoiser, reconstruction_likelihood
from common.rewards import GaussianLogLikelihood
from common.rgdm import payoff_score_loss
from common.weights import SUFFIX, WeightsError
from molctrl.batches import MoleculeBatches
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import QM9Split
from molctrl.payoff import PriorPool, pool_atom_counts
from molctrl.predictor import PROPERTIES
from molctrl.prior import MoleculeDiffusion
from molctrl.weights import load_reward


@dataclass
class GuidanceConfig(ControlConfig):
    """Hyper-parameters of molecule fine-tuning: :class:`common.control.ControlConfig` and the targets'."""

    record_key = "guidance"

    candidates: int | None = 4096  # the full pool of 50,000 halved the training rate
    properties: tuple[str, ...] = PROPERTIES  # conditions drawn in training (random non-empty subsets)
    pool: str | None = None  # prior proposals: reuse the molecules of this pool.safetensors (rescored) instead
    score_targets: str = "predicted"  # step-level RGDM at data states: y ~ p̂(y | x) of the reward model at the
    # noised molecule x ("predicted"), or y ~ p(c | N) drawn apart from it ("independent")
    score_max_step: int | None = None  # step-level RGDM at data states: train t uniform on {0, …, this} (None: T)
    cond_gate: str = "time"  # the condition enters as t·W_c c ("time") or W_c c ("none"), molctrl.prior

    def __post_init__(self) -> None:
        super().__post_init__()
        self.properties = tuple(self.properties)
        if self.score_targets not in ("predicted", "independent"):
            raise ValueError(f"unknown score_targets {self.score_targets!r} (expected predicted or independent)")


def target_batches(conditions: PropertyConditions, batch_size: int, properties: tuple[str, ...], seed: int = 0,
                   repeats: int = 1) -> TargetBatches:
    """Step -> ``(n_atoms (B,), y (B, 6), y_mask (B, 6))``: N from the conditioning split, y ~ p(c | N), and
    a random non-empty subset of ``properties`` conditioned (nothing when ``properties`` is empty), each
    target repeated on ``repeats`` consecutive rows."""
    def draw(rows: torch.Tensor, n_atoms: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return conditions.sample(n_atoms, g), conditions.random_mask(len(rows), properties, g)

    return TargetBatches(conditions.n_atoms, draw, batch_size, seed, repeats)


def labelled_batches(data: QM9Split, conditions: PropertyConditions, batch_size: int, properties: tuple[str, ...],
                     seed: int = 0) -> LabelledBatches:
    """EDM-cond's batches: step -> ``(types, positions, labels (B, 6), y_mask (B, 6))``, labelled molecules
    with a random non-empty subset of ``properties`` of their own labels conditioned."""
    def draw(labels: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return labels, conditions.random_mask(len(labels), properties, g)

    return LabelledBatches(MoleculeBatches(data, batch_size, seed, PROPERTIES), draw, seed)


class PayoffScoreObjective(RewardObjective):
    """Step-level RGDM at noised data states on batches ``(types (B, n), positions (B, n, 3)[, predicted (B, P)])``
    of unlabelled molecules: ε_θ(z_t, t, y) fitted to the prior's ε shifted by (1/τ)·σ_t·∇ log p̂_t(y | z_t),
    the reward's reconstruction likelihood (:func:`common.rgdm.payoff_score_loss`), a random subset of the
    properties conditioned.

    Targets: with the reward model's predictions ``predicted`` of each clean molecule x, y ~ N(f(x), s²) =
    p̂(y | x), so that (x, y) ~ p_data(x)·p̂(y | x) and the states z_t follow the pay-off distribution's
    own marginals q_t(z | y); without them, y ~ p(c | N) apart from x, and most states pair a molecule
    with a target far from its properties (larger shifts, at states the conditional sampler never meets)."""

    def forward(self, types: torch.Tensor, positions: torch.Tensor, predicted: torch.Tensor | None = None) -> torch.Tensor:
        model, diffusion, reward = self.model, self.model.diffusion, self.reward
        x, mask = model.encode(types, positions)
        y = self.conditions.sample(mask.sum(1).cpu()).to(x) if predicted is None else predictive_targets(reward, predicted)
        y_mask = self.conditions.random_mask(len(x), self.config.properties).to(x.device)
        payoff = GuidedDenoiser(self.prior.denoiser, diffusion, reconstruction_likelihood(reward, diffusion, y, y_mask),
                                scale=1.0 / self.config.temperature)
        loss, shift = payoff_score_loss(diffusion, model.denoiser, payoff, x, mask, self.conditions.encode(y, y_mask),
                                        self.config.score_max_step)
        self.stats = {"shift": shift.mean().item()}
        return loss.mean()


def predictive_targets(reward: GaussianLogLikelihood, predicted: torch.Tensor) -> torch.Tensor:
    """Targets ``y (B, 6)`` drawn from the reward model's predictive N(f(x), s²) given its predictions
    ``predicted (B, P)`` of its own columns; NaN in the columns it does not predict."""
    y = torch.full((len(predicted), len(PROPERTIES)), float("nan"), dtype=predicted.dtype, device=predicted.device)
    columns = reward.target_columns or list(range(reward.n_targets))
    y[:, columns] = predicted + reward.scale.to(predicted) * torch.randn_like(predicted)
    return y


def make_objective(spec: dict, prior: MoleculeDiffusion, data: QM9Split, batch_size: int, seed: int = 0,
                   pool_path: Path | None = None, load_init: bool = True) -> tuple[nn.Module, object]:
    """The objective and batch source that ``spec`` (a finetune run's ``model`` record: ``method``,
    ``guidance``, ``reward_model``, ``maximize``, ``init``) describes, with conditions fitted on ``data``.
    The conditioned model starts as the prior with a zero condition embedding, or as the conditioned
    model file ``init`` (e.g. CTRL from an RGDM model; ``load_init=False`` skips reading it, for a run
    resumed from its checkpoint).

    Prior-proposal RGDM samples its pool once (or rescores the molecules of ``guidance.pool``) and keeps
    it at ``pool_path`` (reused when there); data-proposal RGDM scores the molecules of ``data``."""
    conditions = PropertyConditions.from_split(data)
    objective, batches = _objective(spec, prior, data, conditions, batch_size, seed, pool_path)
    if spec.get("init") and load_init:
        start_from(objective.model, spec["init"], conditions)
    return objective, batches


def _objective(spec: dict, prior: MoleculeDiffusion, data: QM9Split, conditions: PropertyConditions,
               batch_size: int, seed: int, pool_path: Path | None) -> tuple[nn.Module, object]:
    guidance = GuidanceConfig(**spec["guidance"])
    model = prior.with_condition(conditions.cond_dim, cond_gate=guidance.cond_gate)
    if spec["method"] == "cond":
        return (ConditionedDenoising(model, conditions, guidance, {"method": "cond"}),
                labelled_batches(data, conditions, batch_size, guidance.properties, seed))
    reward = load_reward(prior, spec["reward_model"], spec["maximize"], guidance.properties)
    if guidance.method == "rgdm" and guidance.proposal in ("prior", "data"):
        if guidance.proposal == "data":
            pool = PriorPool.from_split(data).scored(prior, reward)
        elif pool_path is not None and Path(pool_path).exists():
            pool = PriorPool.load(pool_path)
        elif guidance.pool:
            pool = PriorPool.load(guidance.pool).scored(prior, reward)
            if pool_path is not None:
                pool.save(pool_path)
        else:
            g = torch.Generator().manual_seed(seed)
            n_atoms = pool_atom_counts(conditions.n_atoms, guidance.pool_size, generator=g)
            pool = PriorPool.sample(prior, reward, n_atoms, guidance.pool_steps, g)
            if pool_path is not None:
                pool.save(pool_path)
        targets = target_batches(conditions, batch_size, guidance.properties, seed)
        return (ConditionedDenoising(model, conditions, guidance, {"pool_seconds": round(pool.seconds, 1)}),
                PayoffBatches(pool, reward, targets, guidance.temperature, guidance.candidates))
    if guidance.method == "rgdm-step" and guidance.proposal == "data":
        if not isinstance(reward, GaussianLogLikelihood):
            raise ValueError("step-level RGDM on data states needs property targets (a likelihood reward), "
                             "not --maximize")
        predicted = None
        if guidance.score_targets == "predicted":
            predicted = PriorPool.from_split(data).scored(prior, reward).scores
        return (PayoffScoreObjective(model, prior, reward, conditions, guidance),
                MoleculeBatches(data, batch_size, seed, labels=predicted))
    return (RewardObjective(model, prior, reward, conditions, guidance),
            target_batches(conditions, batch_size, guidance.properties, seed, guidance.rollouts_per_target))


def start_from(model: MoleculeDiffusion, path: str | Path, conditions: PropertyConditions) -> None:
    """Load the conditioned model file ``path`` into ``model``, checking it encodes targets as ``conditions`` do."""
    start, tree = load_module(path, [MoleculeDiffusion])
    if "conditions" not in tree:
        raise WeightsError(f"{path}: not a conditioned molecule model (a finetune run's model{SUFFIX})")
    with errors_naming(path):
        stored = typed_field(tree, "conditions", dict)
        theirs = torch.tensor([conform(stored.get(name), list[float], f"conditions.{name}") for name in ("mean", "scale")])
    if theirs.shape != (2, len(conditions.mean)) or not torch.allclose(
            theirs, torch.stack([conditions.mean, conditions.scale]).cpu().to(theirs.dtype)):
        raise ValueError(f"{path}: its targets were normalised on other data than this run's")
    gate = start.config.cond_gate
    if gate != model.config.cond_gate:
        raise ValueError(f"{path}: its condition gate is {gate!r}, this run's {model.config.cond_gate!r} "
                         f"(pass --cond-gate {gate})")
    model.load_state_dict(start.state_dict())
