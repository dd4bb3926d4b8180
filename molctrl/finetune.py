"""Fine-tuning objectives that turn the prior into a property-conditioned generator, for the trainer.

Each objective is an ``nn.Module`` whose ``forward(*batch)`` is the loss of one batch, so the shared
:class:`common.training.Trainer` gives it EMA, checkpoints, resume and progress. The trained part is a
conditioned copy of the prior (:meth:`MoleculeDiffusion.with_condition`); the prior and the reward
predictor are frozen inside.

* :class:`RewardObjective` — CTRL, trajectory- or step-level RGDM, or DDPO, on batches of targets
  ``(n_atoms (B,), y (B, 6), y_mask (B, 6))`` from :class:`TargetBatches`;
* :class:`PayoffScoreObjective` — step-level RGDM at noised unlabelled molecules, with targets drawn
  from the reward model's predictive at each molecule (:func:`common.rgdm.payoff_score_loss`);
* :class:`ConditionalDenoising` — the denoising loss with the labels as the condition: EDM-cond on
  labelled molecules, and RGDM on pay-off resampled prior molecules (:mod:`molctrl.payoff`).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from common.ctrl import ctrl_loss
from common.ddpo import ddpo_loss, sample_trajectories
from common.exports import conform, errors_naming, load_module, typed_field
from common.guidance import GuidedDenoiser, reconstruction_likelihood
from common.rewards import GaussianLogLikelihood, Reward
from common.rgdm import payoff_score_loss, rgdm_step_loss, rgdm_trajectory_loss
from common.rollout import KL_FORMS
from common.training import EpochSampler
from common.weights import SUFFIX, WeightsError
from molctrl.batches import MoleculeBatches
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import QM9Split
from molctrl.predictor import PROPERTIES
from molctrl.prior import MoleculeDiffusion

METHODS = ("ctrl", "rgdm", "rgdm-step", "ddpo")


# trajectory RGDM: pools of prior samples or of the data, or rollouts; step-level RGDM: noised data states
# (data) or the model's rollouts (any other)
PROPOSALS = ("prior", "data", "model")


@dataclass
class GuidanceConfig:
    """Hyper-parameters of the reward objectives (see :mod:`common.ctrl`, :mod:`common.rgdm`, :mod:`common.ddpo`)."""

    method: str = "ctrl"
    properties: tuple[str, ...] = PROPERTIES  # conditions drawn in training (random non-empty subsets)
    sampling_steps: int = 25
    alpha: float = 1.0  # CTRL's KL weight
    kl: str = "chain"  # CTRL's KL: "continuous" (Girsanov, on the sampler's grid) or "chain" (common.rollout)
    kl_cap: float | None = None  # CTRL: trajectories with a larger KL are left out of the loss (common.ctrl)
    grad_steps: int = 8  # CTRL: reparameterised final transitions, drawn uniformly in [1, grad_steps]
    temperature: float = 1.0  # RGDM's τ
    proposal: str = "prior"  # trajectory RGDM: a pool of prior samples or of the unlabelled data (molctrl.payoff),
    # or the model's rollouts; step-level RGDM: states of noised data (data) or of the model's rollouts
    pool_size: int = 10_000  # prior proposals: pool molecules
    pool_steps: int = 50  # prior proposals: sampling steps of the pool
    pool: str | None = None  # prior proposals: reuse the molecules of this pool.safetensors (rescored) instead
    candidates: int | None = None  # prior/data proposals: pool molecules weighed per target (None: all of its size)
    samples_per_target: int = 4  # model proposals: rollouts per target, whose weights are normalised together
    radius: float = 0.5  # step-level RGDM's ρ
    score_targets: str = "predicted"  # step-level RGDM at data states: y ~ p̂(y | x) of the reward model at the
    # noised molecule x ("predicted"), or y ~ p(c | N) drawn apart from it ("independent")
    score_max_step: int | None = None  # step-level RGDM at data states: train t uniform on {0, …, this} (None: T)
    train_steps: int = 4  # step-level RGDM / DDPO: transitions trained per trajectory
    clip: float = 1e-4  # DDPO's ratio clip
    cond_lr_scale: float = 10.0  # learning rate of the condition embedding / that of the rest
    cond_gate: str = "time"  # the condition enters as t·W_c c ("time") or W_c c ("none"), molctrl.prior
    train_backbone: bool = True  # False: the condition embedding alone is trained

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (expected one of {', '.join(METHODS)})")
        self.properties = tuple(self.properties)
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r} (expected one of {', '.join(PROPOSALS)})")
        if self.score_targets not in ("predicted", "independent"):
            raise ValueError(f"unknown score_targets {self.score_targets!r} (expected predicted or independent)")
        if self.kl not in KL_FORMS:
            raise ValueError(f"unknown KL form {self.kl!r} (expected one of {', '.join(KL_FORMS)})")


class TargetBatches:
    """Step -> ``(n_atoms (B,), y (B, 6), y_mask (B, 6))``: N from the conditioning split, y ~ p(c | N), and
    a random non-empty subset of ``properties`` conditioned (nothing when ``properties`` is empty), each
    target repeated on ``repeats`` consecutive rows. Deterministic in the step."""

    def __init__(self, conditions: PropertyConditions, batch_size: int, properties: tuple[str, ...], seed: int = 0,
                 repeats: int = 1):
        if batch_size % repeats:
            raise ValueError(f"batch size {batch_size} is not a multiple of {repeats} samples per target")
        self.conditions, self.repeats, self.seed = conditions, repeats, seed
        self.properties = properties
        self.sampler = EpochSampler(len(conditions.n_atoms), batch_size // repeats, seed)
        self.n_atoms = conditions.n_atoms  # the trainer reports len(n_atoms) as the data size

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 17 + rank)
        rows = torch.from_numpy(self.sampler.indices(step, rank, world_size))
        n_atoms = self.conditions.n_atoms[rows]
        y = self.conditions.sample(n_atoms, g)
        y_mask = self.conditions.random_mask(len(rows), self.properties, g)
        return tuple(v.repeat_interleave(self.repeats, dim=0) for v in (n_atoms, y, y_mask))


class RewardObjective(nn.Module):
    """The loss of one reward fine-tuning method on a batch of targets."""

    def __init__(self, prior: MoleculeDiffusion, reward: Reward, conditions: PropertyConditions,
                 config: GuidanceConfig):
        super().__init__()
        self.model = prior.with_condition(conditions.cond_dim, config.cond_gate)
        self.prior = copy.deepcopy(prior).requires_grad_(False).eval()
        self.reward = reward.requires_grad_(False).eval()
        self.conditions, self.config = conditions, config
        self.stats: dict[str, float] = {}  # the last batch's reward, KL or ESS, for the progress lines

    def parameter_groups(self) -> list[dict]:
        return self.model.parameter_groups(self.config.cond_lr_scale, self.config.train_backbone)

    def _mask(self, n_atoms: torch.Tensor) -> torch.Tensor:
        return torch.arange(int(n_atoms.max()), device=n_atoms.device).unsqueeze(0) < n_atoms.unsqueeze(1)

    def forward(self, n_atoms: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        cfg, model = self.config, self.model
        mask, cond = self._mask(n_atoms), self.conditions.encode(y, y_mask)
        shared = {"n_sampling_steps": cfg.sampling_steps}
        args = (model.diffusion, model.denoiser, self.prior.denoiser, self.reward, mask, model.n_channels, y, y_mask,
                cond)
        if cfg.method == "ctrl":
            grad_steps = int(torch.randint(1, cfg.grad_steps + 1, (1,)))
            loss, self.stats = ctrl_loss(*args, alpha=cfg.alpha, grad_steps=grad_steps, kl=cfg.kl,
                                         kl_cap=cfg.kl_cap, **shared)
        elif cfg.method == "rgdm":
            loss, self.stats = rgdm_trajectory_loss(*args, temperature=cfg.temperature,
                                                    group_size=cfg.samples_per_target, **shared)
        elif cfg.method == "rgdm-step":
            loss, self.stats = rgdm_step_loss(model.diffusion, model.denoiser, self.prior.denoiser, self.reward, mask,
                                     model.n_channels, y, y_mask, cond, temperature=cfg.temperature,
                                     radius=cfg.radius, n_train_steps=cfg.train_steps, **shared)
        else:
            trajectories = sample_trajectories(model.diffusion, model.denoiser, mask, model.n_channels,
                                               cfg.sampling_steps, cond)
            rewards = self.reward(trajectories.x, mask, y, y_mask)
            steps = torch.randperm(len(trajectories.steps))[: cfg.train_steps].tolist()
            loss = ddpo_loss(model.diffusion, model.denoiser, trajectories, rewards, steps, cfg.clip)
            self.stats = {"reward": rewards.mean().item()}
        return loss

    def export(self) -> dict:
        """The conditioned model's weights file, with what it was trained for."""
        return self.model.export() | {"guidance": asdict(self.config),
                                      "conditions": {"mean": self.conditions.mean.tolist(),
                                                     "scale": self.conditions.scale.tolist()}}


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


class ConditionalDenoising(nn.Module):
    """The ε-prediction loss of molecules with their labels as the condition.

    EDM-cond on labelled data (batches ``(types, positions, labels)``, random non-empty subsets of
    ``properties`` conditioned), or prior-proposal RGDM on pay-off resampled pool molecules (batches
    ``(types, positions, y, y_mask, ess)`` from :class:`molctrl.payoff.PayoffBatches`). ``record`` is
    stored in the exported weights under ``guidance``.
    """

    def __init__(self, prior: MoleculeDiffusion, conditions: PropertyConditions, properties: tuple[str, ...],
                 cond_lr_scale: float = 1.0, record: dict | None = None, gate: str = "time"):
        super().__init__()
        self.model = prior.with_condition(conditions.cond_dim, gate)
        self.conditions, self.properties, self.cond_lr_scale = conditions, properties, cond_lr_scale
        self.record = record or {"method": "cond"}
        self.stats: dict[str, float] = {}

    def parameter_groups(self) -> list[dict]:
        return self.model.parameter_groups(self.cond_lr_scale)

    def forward(self, types: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor,
                y_mask: torch.Tensor | None = None, ess: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self.model.encode(types, positions)
        if y_mask is None:
            y_mask = self.conditions.random_mask(len(types), self.properties).to(labels.device)
        if ess is not None:
            self.stats = {"ess": ess.mean().item()}
        cond = self.conditions.encode(labels, y_mask)
        return self.model.diffusion.denoising_loss(self.model.denoiser, x, mask, cond).mean()

    def export(self) -> dict:
        return self.model.export() | {"guidance": self.record,
                                      "conditions": {"mean": self.conditions.mean.tolist(),
                                                     "scale": self.conditions.scale.tolist()}}


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
    if spec["method"] == "cond":
        return (ConditionalDenoising(prior, conditions, guidance.properties, guidance.cond_lr_scale,
                                     None, guidance.cond_gate),
                MoleculeBatches(data, batch_size, seed, PROPERTIES))
    reward = spec_reward(spec, prior)
    if guidance.method == "rgdm" and guidance.proposal in ("prior", "data"):
        from molctrl.payoff import PayoffBatches, PriorPool, pool_atom_counts

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
        record = asdict(guidance) | {"pool_seconds": round(pool.seconds, 1)}
        targets = TargetBatches(conditions, batch_size, guidance.properties, seed)
        return (ConditionalDenoising(prior, conditions, guidance.properties, guidance.cond_lr_scale, record,
                                     guidance.cond_gate),
                PayoffBatches(pool, reward, targets, guidance.temperature, guidance.candidates))
    if guidance.method == "rgdm-step" and guidance.proposal == "data":
        if not isinstance(reward, GaussianLogLikelihood):
            raise ValueError("step-level RGDM on data states needs property targets (a likelihood reward), "
                             "not --maximize")
        predicted = None
        if guidance.score_targets == "predicted":
            from molctrl.payoff import PriorPool

            predicted = PriorPool.from_split(data).scored(prior, reward).scores
        return (PayoffScoreObjective(prior, reward, conditions, guidance),
                MoleculeBatches(data, batch_size, seed, labels=predicted))
    repeats = guidance.samples_per_target if guidance.method == "rgdm" else 1
    return (RewardObjective(prior, reward, conditions, guidance),
            TargetBatches(conditions, batch_size, guidance.properties, seed, repeats))


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


def spec_reward(spec: dict, prior: MoleculeDiffusion) -> Reward:
    """The reward a finetune spec names: an RDKit score to maximise, the reward model's likelihood, or
    (reward model ``xtb``) the calibrated GFN2-xTB likelihood of the conditioned properties."""
    from molctrl.chemistry import ChemistryReward
    from molctrl.predictor import likelihood_reward
    from molctrl.weights import load_predictor

    if spec["maximize"]:
        return ChemistryReward(spec["maximize"], prior.decode)
    if spec["reward_model"] == "xtb":
        from molctrl.xtb_reward import XTBLikelihood

        return XTBLikelihood(prior.decode, GuidanceConfig(**spec["guidance"]).properties)
    predictor = load_predictor(spec["reward_model"])
    return likelihood_reward(predictor, predictor.properties, prior.config.type_scale)
