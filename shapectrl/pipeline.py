"""The Python API for shapes: load once, generate clouds for a class and attributes, score them.

    import shapectrl

    generator = shapectrl.load()                                    # the shipped RGDM model
    result = generator.sample("chair", {"chair_back_height": 0.6}, n=4, seed=0)
    print(shapectrl.evaluate(result))                               # class accuracy, attribute MAE
    shapectrl.write_clouds("chairs", result.clouds)

``shapectrl generate`` is this module behind a command line; :class:`ShapeGenerationConfig` holds the
defaults both use. ``particles=K`` steers K particles per cloud from the prior (or, with
``proposal="model"``, from the controlled model) towards p_pre·exp(r) by sequential Monte Carlo.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from common.diffusion import SOLVERS, solver_named
from common.runtime import (
    check_precision_choice,
    resolve_device,
    resolve_precision,
    seed_everything,
    set_precision,
)
from common.smc import SteeringReport, check_pick
from shapectrl.classifier import ShapeClassifier
from shapectrl.conditions import RareTargetWarning, ShapeConditions
from shapectrl.control import (
    ControlledShapes,
    ShapeControlConfig,
    target_class,
    with_class_models,
)
from shapectrl.io import write_ply
from shapectrl.prior import ShapeDiffusion
from shapectrl.reward import ShapeReward
from shapectrl.steer import steer_shapes
from shapectrl.weights import (
    CLASS_MODELS,
    DEFAULT_MODELS,
    EVALUATOR,
    PRIOR,
    REWARD_CLASSIFIER,
    weight_path,
)

PROPOSALS = ("prior", "model")


#: Classifier-free guidance w for targets with attributes and for SMC's model proposal (attribute errors at w = 1:
#: docs/shapes.md). A class alone is sampled from the model itself (w = 1), each cloud that the reward classifier puts
#: in another class drawn again: at 2,048 points 6.4 points lower 1-NNA-CD than w = 2 on 300 < t ≤ 1,000, at the same
#: class accuracy, in a third less time (docs/shapes.md).
GUIDANCE = 2.0


@dataclass
class ShapeGenerationConfig:
    """How clouds are generated (the defaults of ``shapectrl generate``): the shipped model of
    ``method``; ``particles`` > 0 steers by SMC with ``proposal`` towards p_pre·exp(r/``temperature``), each
    cloud its system's draw by the final weights or its best particle (``pick``, :data:`common.smc.PICKS`), r's
    attribute likelihoods ``tolerance`` wide (in training standard deviations; None: the model's training width);
    ``points`` per cloud (PointFlow's 2,048 by default; None: the model's training size); ``steps``
    reverse steps of ``solver`` (:data:`common.diffusion.SOLVERS`); ``guidance_scale`` w of classifier-free
    guidance (None: 1 for a class alone, :data:`GUIDANCE` with attributes or particles), on the diffusion steps
    lo < t ≤ hi of ``guidance_window`` (without particles; None: every step); without particles, each cloud of a class
    target that the reward classifier puts in another class is drawn again, up to ``redraw`` times; ``precision`` that
    of the denoisers' matrix products (``auto``: bf16 where the hardware has it, :func:`common.runtime.resolve_precision`;
    the classifiers stay float32)."""

    method: str = "rgdm"
    particles: int = 0
    proposal: str = "prior"
    temperature: float = 1.0
    pick: str = "best"  # docs/shapes.md: composed targets' class accuracy 96.9 % against 93.8 % for "sample"
    tolerance: float | None = None
    points: int | None = 2048
    steps: int = 50
    solver: str = "dpm2"  # docs/sampling.md: lower 1-NNA-CD than ancestral steps at 512 and 2,048 points, same cost
    guidance_scale: float | None = None
    guidance_window: tuple[int, int] | None = None
    redraw: int = 4
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in ShapeControlConfig.methods:
            raise ValueError(f"unknown method {self.method!r} (expected one of {', '.join(ShapeControlConfig.methods)})")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r} (expected one of {', '.join(PROPOSALS)})")
        check_pick(self.pick)
        solver_named(self.solver)
        check_precision_choice(self.precision)
        if self.particles < 0 or self.redraw < 0 or self.steps < 1 or (self.points is not None and self.points < 1):
            raise ValueError("particles and redraw must be ≥ 0, steps and points ≥ 1")
        if self.guidance_scale is not None and not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be ≥ 0, got {self.guidance_scale}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {self.tolerance}")
        if self.guidance_window is not None and self.particles:
            raise ValueError("a guidance window applies to sampling a model once (particles=0)")


@dataclass
class ClassCheck:
    """What redrawing off-class clouds did: how many clouds were drawn again, the extra draws in all, and how many
    clouds the reward classifier still puts in another class after the last round."""

    redrawn: int
    extra_draws: int
    off_class: int


@dataclass
class GeneratedShapes:
    """What :meth:`ShapeGenerator.sample` returns: clouds ``(B, N, 3)`` in model units (CPU), the target,
    how they were made, the sampling time, SMC's report (None without particles), what measuring
    the attributes needs: the model's conditions and its training size (attributes are measured on
    that many first points of each cloud), the file of the model that drew them, and what the class check did
    (None without it)."""

    clouds: torch.Tensor
    class_name: str | None
    attributes: dict[str, float]
    description: str
    seconds: float
    steering: SteeringReport | None
    conditions: ShapeConditions
    attribute_points: int
    model: Path
    class_check: ClassCheck | None = None


class ShapeGenerator:
    """A controlled shape model, the models of one class each that draw the targets of their class, alone or with
    attributes (``class_models``: {class: (model, file)}; targets without a class, and SMC, stay with the general
    model), and what SMC needs (the prior, the reward), ready to sample. Build it with :meth:`load`."""

    def __init__(self, controlled: ControlledShapes, config: ShapeGenerationConfig, path: Path,
                 prior: ShapeDiffusion | None = None, reward: ShapeReward | None = None,
                 class_check: ShapeClassifier | None = None,
                 class_models: Mapping[str, tuple[ControlledShapes, Path]] | None = None):
        self.controlled, self.config, self.path, self.prior, self.reward = controlled, config, path, prior, reward
        self.class_check, self.class_models = class_check, dict(class_models or {})

    @classmethod
    def load(cls, config: ShapeGenerationConfig | None = None, *, model: str | Path | None = None,
             reward: str | Path | None = None, device: str = "auto") -> ShapeGenerator:
        """The shipped model of ``config.method`` with the shipped models of one class each
        (:data:`~shapectrl.weights.CLASS_MODELS`; none for SMC), or ``model`` alone (a file of ``shapectrl train
        control``), and the shipped reward classifier (or ``reward``) that checks the class or, for SMC, steers with
        the shipped prior. One-line :class:`~common.weights.WeightsError` for an unusable file."""
        config = config or ShapeGenerationConfig()
        dev = resolve_device(device)
        config = replace(config, precision=resolve_precision(config.precision, dev))
        path = weight_path(model or DEFAULT_MODELS[config.method])
        controlled = ControlledShapes.load(path)
        shipped = {} if model or config.particles else CLASS_MODELS.get(config.method, {})  # SMC: the general model
        own = {c: weight_path(name) for c, name in shipped.items()}
        class_models = with_class_models(controlled, own)
        for m in (controlled, *class_models.values()):
            set_precision(m.model.to(dev).eval(), config.precision)
        n_steps = controlled.model.diffusion.n_steps
        if config.guidance_window is not None and config.guidance_window[1] > n_steps:
            raise ValueError(f"guidance window {config.guidance_window[0]}:{config.guidance_window[1]} reaches beyond "
                             f"the {n_steps} diffusion steps of {path}")
        prior = shape_reward = class_check = None
        if config.particles or config.redraw:
            classifier = ShapeClassifier.load(weight_path(reward or REWARD_CLASSIFIER)).to(dev).eval()
        if config.particles:
            prior = set_precision(ShapeDiffusion.load(weight_path(PRIOR)).to(dev).eval(), config.precision)
            shape_reward = controlled.reward(classifier, config.tolerance).to(dev)
        elif config.redraw:
            class_check = classifier
        return cls(controlled, config, path, prior, shape_reward, class_check,
                   {c: (m, own[c]) for c, m in class_models.items()})

    @property
    def points(self) -> int:
        return self.config.points or self.controlled.model.config.n_train_points

    def guidance_scale(self, attributes: Mapping[str, float] | None = None) -> float:
        """Classifier-free guidance w for a target with ``attributes``: ``config.guidance_scale``; by default 1 (the
        model itself, its off-class clouds drawn again) for a class alone and :data:`GUIDANCE` with attributes
        (whose errors are lower guided, docs/shapes.md) or under SMC (as its model proposal was measured)."""
        if self.config.guidance_scale is not None:
            return self.config.guidance_scale
        return GUIDANCE if attributes or self.config.particles else 1.0

    def guidance_window(self, attributes: Mapping[str, float] | None = None) -> tuple[int, int] | None:
        """The diffusion steps lo < t ≤ hi that classifier-free guidance acts on for a target with ``attributes``:
        ``config.guidance_window``, or every step ``(0, T)``; None under SMC or unguided (w = 1)."""
        if self.config.particles or self.guidance_scale(attributes) == 1.0:
            return None
        return self.config.guidance_window or (0, self.controlled.model.diffusion.n_steps)

    def target(self, class_name: str | None = None, attributes: Mapping[str, float] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y (1 + A,), y_mask (1 + A,))`` of a class and attribute values (ValueError naming what the
        model does not know; a :class:`~shapectrl.conditions.RareTargetWarning` for each value that is rare
        in the training data)."""
        if class_name is None and not attributes:
            raise ValueError("give a target: a class, at least one attribute, or both")
        conditions, values = self.controlled.conditions, dict(attributes or {})
        target = conditions.target(class_name, values)
        for line in conditions.rare(values):
            warnings.warn(line, RareTargetWarning, stacklevel=2)
        return target

    def sample(self, class_name: str | None = None, attributes: Mapping[str, float] | None = None, n: int = 16,
               seed: int = 0, batch_size: int = 16, on_batch: Callable[[int], None] | None = None) -> GeneratedShapes:
        """``n`` clouds for one target (a class, attribute values, or both)."""
        y, y_mask = self.target(class_name, attributes)
        config = self.config
        targets = y.expand(n, -1), y_mask.expand(n, -1)
        # SMC's proposal stays the model it was measured with, the model of every class
        own = None if config.particles else self.class_models.get(target_class(self.controlled.conditions, *targets))
        controlled, path = own or (self.controlled, self.path)
        generator = seed_everything(seed)
        t0 = time.perf_counter()
        steered = checked = None
        if config.particles:
            proposal = controlled if config.proposal == "model" else None
            clouds, steered = steer_shapes(self.prior, self.reward, *targets, self.points, config.particles,
                                           config.steps, proposal, self.guidance_scale(attributes), config.temperature,
                                           generator=generator, on_batch=on_batch, solver=SOLVERS[config.solver],
                                           pick=config.pick)
            kernel = controlled.control.get("method", config.method) if proposal else "prior"
            how = f"smc, {config.particles} particles, {kernel} proposal" + (
                f", temperature {config.temperature:g}" if config.temperature != 1 else "") + (
                f", attribute tolerance {config.tolerance:g}" if config.tolerance and attributes else "") + (
                ", best particle" if config.pick == "best" else "")
        else:
            options = dict(n_points=self.points, n_sampling_steps=config.steps, generator=generator,
                           batch_size=batch_size, guidance_scale=self.guidance_scale(attributes),
                           guidance_window=self.guidance_window(attributes), solver=SOLVERS[config.solver])
            how = controlled.control.get("method", config.method) + (
                f", the {class_name} model" if controlled.target_classes else "")
            if class_name is not None and self.class_check is not None:
                clouds, draws, in_class = controlled.sample_in_class(*targets, self.class_check, config.redraw,
                                                                     on_batch=on_batch, **options)
                checked = ClassCheck(int((draws > 1).sum()), int(draws.sum()) - n, int((~in_class).sum()))
            else:
                clouds = controlled.sample(*targets, on_batch=on_batch, **options)
        return GeneratedShapes(controlled.model.denormalise(clouds), class_name, dict(attributes or {}), how,
                               time.perf_counter() - t0, steered, controlled.conditions,
                               min(self.points, controlled.model.config.n_train_points), path, checked)


def load(method: str = "rgdm", *, model: str | Path | None = None, reward: str | Path | None = None,
         device: str = "auto", **options) -> ShapeGenerator:
    """``shapectrl.load(...)``: a :class:`ShapeGenerator` with any :class:`ShapeGenerationConfig` field as
    a keyword (``particles=16``, ``guidance_scale=1.5``, ``points=1024``, ...)."""
    return ShapeGenerator.load(ShapeGenerationConfig(method=method, **options), model=model, reward=reward,
                               device=device)


@dataclass
class ShapeScores:
    """Per cloud: the evaluator's class and its probability ``(B,)``, and each targeted attribute
    measured ``{name: (B,)}``."""

    classes: list[str]
    probabilities: torch.Tensor
    measured: dict[str, torch.Tensor]


def score(result: GeneratedShapes, evaluator: str | Path | ShapeClassifier = EVALUATOR) -> ShapeScores:
    """Each cloud's class by the ``evaluator`` (a classifier other than the reward's) and each targeted
    attribute measured on the first ``result.attribute_points`` points."""
    classifier = evaluator if isinstance(evaluator, ShapeClassifier) else ShapeClassifier.load(weight_path(evaluator))
    if result.class_name is not None and result.class_name not in classifier.classes:
        raise ValueError(f"the evaluator does not know class {result.class_name!r} "
                         f"(it knows {', '.join(classifier.classes)})")
    clouds = result.clouds.to(next(classifier.parameters()).device)
    logits = classifier.eval().predict_logits_model_units(clouds)
    probs, labels = torch.softmax(logits / classifier.temperature, dim=1).max(dim=1)
    conditions = result.conditions
    measured = conditions.measure(clouds[:, : result.attribute_points])
    columns = {name: measured[:, conditions.attributes.index(name)].cpu() for name in result.attributes}
    return ShapeScores([classifier.classes[k] for k in labels.tolist()], probs.cpu(), columns)


def evaluate(result: GeneratedShapes, evaluator: str | Path | ShapeClassifier = EVALUATOR,
             scores: ShapeScores | None = None) -> dict:
    """Class accuracy by the ``evaluator`` (None without a class target) and each targeted attribute's
    mean absolute error, from ``scores`` when given (:func:`score` otherwise)."""
    scores = scores or score(result, evaluator)
    accuracy = None
    if result.class_name is not None:
        accuracy = round(sum(c == result.class_name for c in scores.classes) / len(scores.classes), 5)
    return {"class_accuracy": accuracy,
            "attribute_mae": {name: round(float((values - result.attributes[name]).abs().mean()), 5)
                              for name, values in scores.measured.items()}}


def write_clouds(folder: str | Path, clouds: torch.Tensor, prefix: str = "sample") -> list[Path]:
    """``clouds (B, N, 3)`` as ``FOLDER/PREFIX_0000.ply``, ... (the folder is created); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(clouds) - 1)))
    paths = [folder / f"{prefix}_{k:0{width}d}.ply" for k in range(len(clouds))]
    for path, cloud in zip(paths, clouds):
        write_ply(path, cloud)
    return paths
