"""The class- and attribute-conditional shape benchmark at CPU scale.

    python -m benchmarks.shapes_conditional -n 64 --points 512 --steps 50 [--solver dpm2] --seed 0 --threads 2 \\
        --method rgdm=shapectrl/weights/shapes-rgdm.safetensors --method cond=shapectrl/weights/shapes-cond.safetensors \\
        [--method ctrl=...] [--out benchmarks/results/shapes_conditional.json]

**Class control** (RGDM's shape task), for each of the three classes airplane, chair and car: ``n``
clouds of ``--points`` points from the method conditioned on the class alone, with ``--steps``
reverse steps of ``--solver``. Against ``n`` clouds of that class from the procedural *test* split (same number of
points, the training split's global normalisation, distances in that normalised frame):

* class accuracy — the evaluator (``--evaluator``, the EdgeConv classifier; the reward classifier is
  a PointNet) predicts the class of each sample;
* 1-NNA, COV and MMD for the Chamfer distance (``cd``, on all points) and for PointFlow's approximate
  EMD (``emd``, on the first ``--emd-points`` of each cloud: approxmatch costs ~0.6 s per pair of
  2,048-point clouds on one CPU core), :func:`shapectrl.metrics.compute_all_metrics`.

A reference row scores ``n`` clouds of the *validation* split the same way: what a perfect generator
would get at this sample size (1-NNA near 50 %). With ``--prior``, the unconditional prior is scored
blind: one set of ``n`` samples against each class (its accuracy is the class's share of its samples);
with ``--prior-in-class R`` also restricted to each class: every prior cloud that the reward classifier
(``--reward``, never the evaluator) puts in another class is drawn again, up to R times, so an accepted
cloud is an exact draw of p_prior(x)·1[argmax p̂(· | x) = class] / P(accept), the target that class
control approximates at τ = 1 without training.
With ``--class-prior CLASS=MODEL`` for each of the three classes, each class is drawn from a prior of its own:
the prior fine-tuned on that class's training clouds alone (``shapectrl train prior --init PRIOR --classes
CLASS``), no class check: what the same network does when all of its capacity serves one class.
With ``--best-of-pool POOL`` (an RGDM run's scored pool of M prior clouds), best-of-N: the pool is
shuffled into ``n`` disjoint groups of N = M // n clouds, and each group gives its cloud of highest
reward log p̂(class | x) (the reward classifier's, as RGDM's pay-off weights).

**Attribute control** (``--attribute CLASS:ATTRIBUTE``, repeatable; CLASS may be ``any``): targets are
the attribute values of ``n`` test shapes of the class; each method samples one cloud per target
conditioned on the class and the attribute (class + attribute composed), and, for reference, on the
class alone. Reported: the mean absolute error between the attribute measured on the sample and the
target, for both (``mae_composed``, ``mae_class_only``), and the class accuracy of each; for CLASS
``any`` only ``mae_composed``, the attribute alone. Attributes are measured in model
units on the first ``n_train_points`` points of each cloud (a random subset: points are exchangeable),
as in training.

**Steered rows** (``--smc K:PROPOSAL[:TAU[:best]]``): sequential Monte Carlo (:func:`shapectrl.steer.steer_shapes`)
from the prior (``--prior``, default the shipped one) towards p_prior(x)·exp(r(x; y)/τ), r the reward
classifier's log-probability of the class plus the attribute tolerance likelihoods (``--reward``, the
PointNet; the evaluator stays the EdgeConv), K particles per cloud moved by the prior or by a --method's
model, each output drawn from its system by the final weights (or, with ``best``, the particle of highest
reward); class rows and attribute rows as above, with the denoiser evaluations per cloud.

Compute per row: the model's training steps and seconds (from its weights file) and sampling seconds.
"""
from __future__ import annotations

import sys
import time

import click
import torch

from benchmarks.record import (
    command_line,
    emit,
    guided_row,
    machine_info,
    smc_spec_fields,
)
from common.cli import precision_option, solver_option, window_option
from common.diffusion import SOLVERS, Solver
from common.runtime import resolve_precision, set_precision
from common.selection import redraw_refused
from common.weights import read_tree
from shapectrl.classifier import ShapeClassifier
from shapectrl.control import (
    ControlledShapes,
    ShapePool,
    target_class,
    with_class_models,
)
from shapectrl.data.families import CLASSES
from shapectrl.data.normalisation import Normalisation
from shapectrl.data.procedural import ProceduralShapes
from shapectrl.metrics import compute_all_metrics
from shapectrl.prior import ShapeDiffusion

RGDM_CLASSES = ("airplane", "chair", "car")
DEFAULT_ATTRIBUTES = ("chair:chair_back_height", "airplane:airplane_wing_span", "car:car_roof_length", "any:height")


def _split(split: str, n: int, points: int, data_dir: str | None, normalisation: Normalisation) -> ProceduralShapes:
    """``n`` shapes per class of ``split`` (their first ``points`` points) in the models' normalisation."""
    shapes = ProceduralShapes(split, n, 2048, CLASSES, 0, data_dir, normalisation)
    shapes.points = shapes.points[:, :points]
    return shapes


def _of_class(shapes: ProceduralShapes, name: str) -> torch.Tensor:
    return shapes.normalised_points[shapes.labels == CLASSES.index(name)]


def _accuracy(evaluator: ShapeClassifier, clouds: torch.Tensor, name: str, frame: Normalisation) -> float:
    """Share of ``clouds (B, N, 3)`` (normalised by ``frame``) that the evaluator puts in class ``name``."""
    predicted = evaluator.predict_logits_model_units(frame.denormalise(clouds)).argmax(1)
    return round(float((predicted == evaluator.classes.index(name)).float().mean()), 4)


def _best_of_pool(pool: ShapePool, classes: tuple[str, ...], n: int, seed: int):
    """``draw(cls, k) -> (n, N, 3)``: the highest-reward cloud of each of n disjoint groups of the pool."""
    group = len(pool.points) // n
    if group < 1:
        raise click.BadParameter(f"a pool of {len(pool.points)} clouds cannot give {n} samples", param_hint="--best-of-pool")

    def draw(cls: str, k: int) -> torch.Tensor:
        order = torch.randperm(len(pool.points), generator=torch.Generator().manual_seed(seed * 1000 + k))
        groups = order[: n * group].view(n, group)
        scores = pool.scores[groups, classes.index(cls)]
        return pool.points[groups.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)]

    return draw, group


def _class_priors(specs: tuple[str, ...], frame: Normalisation, precision: str) -> dict[str, ShapeDiffusion]:
    """``--class-prior CLASS=MODEL`` for each class of the table: the priors, checked (their class, their frame)."""
    priors = {}
    for spec in specs:
        cls, _, path = spec.partition("=")
        if cls not in RGDM_CLASSES or not path:
            raise click.BadParameter(f"{spec!r}: expected CLASS=MODEL with CLASS one of {', '.join(RGDM_CLASSES)}",
                                     param_hint="--class-prior")
        prior = ShapeDiffusion.load(path)
        if prior.classes != (cls,):
            raise click.BadParameter(f"{path}: trained on {', '.join(prior.classes) or 'unrecorded classes'}, not on "
                                     f"{cls} alone", param_hint="--class-prior")
        if prior.normalisation != frame:
            raise click.BadParameter(f"{path}: trained in another normalisation than the models", param_hint="--class-prior")
        priors[cls] = set_precision(prior.eval(), precision)
    missing = [c for c in RGDM_CLASSES if c not in priors]
    if missing:
        raise click.BadParameter(f"no prior for {', '.join(missing)}", param_hint="--class-prior")
    return priors


def _prior_in_class(prior: ShapeDiffusion, check: ShapeClassifier, rounds: int, n: int, points: int, steps: int,
                    solver: Solver, seed: int, scorer, test: ProceduralShapes, references: dict[str, References]) -> dict:
    """The class row of the prior restricted to each class by ``check`` (:func:`common.selection.redraw_refused`)."""
    extra, refused = {}, {}

    def draw(cls: str, k: int) -> torch.Tensor:
        generator, wanted = torch.Generator().manual_seed(seed * 1000 + k), check.classes.index(cls)
        clouds, draws, accepted = redraw_refused(
            lambda rows: prior.sample_many(len(rows), points, steps, generator, solver=solver),
            lambda x, rows: check.predicts(x, torch.full((len(rows),), wanted)), n, rounds)
        extra[cls], refused[cls] = int(draws.sum()) - n, int((~accepted).sum())
        return clouds

    row = _class_rows(f"prior, off-class clouds redrawn (≤ {rounds} times)", draw, scorer, test, references)
    return row | {"extra_draws": extra, "never_accepted": refused}


def _trained(path: str) -> dict:
    """What a row records of a model file: its path, training steps and seconds, and its pool's seconds."""
    trained = read_tree(path)
    return {"model": path, "train_steps": trained.get("step"), "train_seconds": trained.get("train_seconds"),
            "pool_seconds": trained.get("control", {}).get("pool_seconds")}


class References:
    """The test clouds of one class ``(M, N, 3)``; their own distance matrices are computed once."""

    def __init__(self, clouds: torch.Tensor, emd_points: int):
        self.clouds, self.emd_points, self.cache = clouds, emd_points, {}

    def metrics(self, samples: torch.Tensor) -> dict[str, float]:
        """MMD, COV and 1-NNA of ``samples (B, N, 3)``: CD on all N points, EMD on the first ``emd_points``
        (none when 0)."""
        e = self.emd_points
        out = compute_all_metrics(samples, self.clouds, ("cd",), reference_distances=self.cache)
        if e:
            out |= compute_all_metrics(samples[:, :e], self.clouds[:, :e], ("emd",), reference_distances=self.cache)
        return {k: round(v, 5) for k, v in out.items()}


def _class_rows(name: str, draw, evaluator, test: ProceduralShapes, references: dict[str, References]) -> dict:
    """Class accuracy and set metrics against the test clouds of each RGDM class, and their means."""
    row, seconds = {"row": name, "classes": {}}, 0.0
    for k, cls in enumerate(RGDM_CLASSES):
        t0 = time.perf_counter()
        samples = draw(cls, k)
        seconds += time.perf_counter() - t0
        row["classes"][cls] = {"accuracy": _accuracy(evaluator, samples, cls, test.normalisation),
                               **references[cls].metrics(samples)}
        print(f"{name} {cls}: {row['classes'][cls]}", file=sys.stderr)
    row["mean"] = {key: round(sum(c[key] for c in row["classes"].values()) / len(RGDM_CLASSES), 5)
                   for key in next(iter(row["classes"].values()))}
    return row | {"sampling_seconds": round(seconds, 1)}


def _attribute_rows(sample, conditions, frame: Normalisation, n_measure: int, evaluator, test: ProceduralShapes,
                    specs, n: int, seed: int) -> list[dict]:
    """Attribute-control rows of one sampler ``sample(y, mask, g) -> (B, N, 3)`` (normalised clouds)."""
    rows = []
    for j, spec in enumerate(specs):
        cls, _, attribute = spec.partition(":")
        if attribute not in conditions.attributes:
            raise click.BadParameter(f"{spec}: the model is not conditioned on {attribute!r}", param_hint="--attribute")
        pool = test.points if cls == "any" else test.points[test.labels == CLASSES.index(cls)]
        pool = pool[:n]
        targets = conditions.measure(pool[:, :n_measure])[:, conditions.attributes.index(attribute)]
        row = {"class": cls, "attribute": attribute, "targets": len(targets)}
        for label, with_attribute in (("composed", True), ("class_only", False)):
            y = torch.zeros(len(targets), conditions.n_targets)
            mask = torch.zeros_like(y, dtype=torch.bool)
            column = 1 + conditions.attributes.index(attribute)
            if cls != "any":
                y[:, 0], mask[:, 0] = conditions.classes.index(cls), True
            if with_attribute or cls == "any":
                y[:, column], mask[:, column] = targets, True
            if not mask.any():
                continue
            clouds = sample(y, mask, torch.Generator().manual_seed(seed * 1000 + 100 + j))
            measured = conditions.measure(frame.denormalise(clouds[:, :n_measure]))[:, column - 1]
            row[f"mae_{label}"] = round(float((measured - targets).abs().mean()), 5)
            if cls != "any":
                row[f"accuracy_{label}"] = _accuracy(evaluator, clouds, cls, frame)
            if cls == "any":
                break
        print(f"attribute {spec}: {row}", file=sys.stderr)
        rows.append(row)
    return rows


def _steered(spec: str, models: dict, prior_path: str | None, reward_path: str, tolerance: float | None, points: int,
             steps: int, guidance_scale: float, solver: Solver, precision: str):
    """The row name and sampler ``sample(y, mask, g)`` of ``--smc K:PROPOSAL[:TAU[:best]]`` (the prior, or a
    --method's model, in ``precision``), towards p_pre·exp(r/TAU) (TAU 1 by default), r the reward classifier and
    the attribute likelihoods of the first --method's conditions, ``tolerance`` wide (None: that model's training
    tolerance); ``best`` outputs each system's best particle."""
    from shapectrl.steer import steer_shapes
    from shapectrl.weights import PRIOR, weight_path

    k, proposal, tau, flags = smc_spec_fields(spec)
    try:
        k, tau = int(k), float(tau)
        if k < 1 or not tau > 0 or flags not in ([], ["best"]):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{spec}: expected K:PROPOSAL[:TAU[:best]] with K ≥ 1 and TAU > 0, e.g. 16:prior or "
                                 "16:rgdm:0.25:best", param_hint="--smc") from None
    pick = "best" if flags else "sample"
    if proposal != "prior" and proposal not in models:
        raise click.BadParameter(f"{spec}: the proposal is 'prior' or a --method name", param_hint="--smc")
    reference = next(iter(models.values()))[1]
    prior = set_precision(ShapeDiffusion.load(weight_path(prior_path or PRIOR)).eval(), precision)
    reward = reference.reward(ShapeClassifier.load(weight_path(reward_path)), tolerance)
    kernel = None if proposal == "prior" else models[proposal][1]
    calls = {}

    def sample(y: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        clouds, report = steer_shapes(prior, reward, y, mask, points, k, steps, kernel, guidance_scale, tau,
                                      generator=g, solver=solver, pick=pick)
        calls.update(network_calls_per_cloud=report.network_calls, mean_ess=round(float(report.ess.mean()), 2))
        return clouds

    name = f"SMC, K = {k}, {proposal} proposal" + (f", τ = {tau:g}" if tau != 1 else "") + (
        f", attribute tolerance {reward.tolerance:g}" if reward.tolerance != reference.tolerance else "")
    return name + (", output: the best particle" if pick == "best" else ""), sample, calls


@click.command()
@click.option("--method", "methods", multiple=True, metavar="NAME=MODEL[,CLASS=MODEL...]", required=True,
              help="A controlled model (from 'shapectrl train control'), e.g. rgdm=shapectrl/weights/shapes-rgdm.safetensors; "
                   "each CLASS=MODEL after it a model of that class alone (train control --target-classes CLASS) that "
                   "draws the targets of that class (alone or with attributes), as 'shapectrl generate' draws them "
                   "with the shipped class models.")
@click.option("--prior", "prior_path", default=None, metavar="MODEL",
              help="Also score this unconditional prior, blind to the class: one set of n samples against each "
                   "class's test clouds (its accuracy is the share of the class among the prior's samples).")
@click.option("--prior-in-class", "prior_rounds", type=click.IntRange(min=1), default=None, metavar="R",
              help="Also score the --prior restricted to each class: each cloud the --reward classifier puts in "
                   "another class drawn again, up to R times (the row records the extra draws and the clouds "
                   "never accepted).")
@click.option("--class-prior", "class_prior_specs", multiple=True, metavar="CLASS=MODEL",
              help="Also score one prior per class (shapectrl train prior --init PRIOR --classes CLASS), each class "
                   "drawn from its own; give one for each of airplane, chair and car.")
@click.option("--best-of-pool", "pool_path", type=click.Path(exists=True, dir_okay=False), default=None, metavar="POOL",
              help="Also score best-of-N selection from this scored pool of prior clouds (an RGDM run's pool.safetensors).")
@click.option("--smc", "smc_specs", multiple=True, metavar="K:PROPOSAL[:TAU[:best]]",
              help="A sequential Monte Carlo row: K particles per cloud from the --prior (default: shipped), moved by "
                   "the prior or by a --method's model (its NAME), steered by --reward towards p_prior·exp(r/TAU) (TAU 1 "
                   "by default), e.g. 16:prior, 16:rgdm-data:0.25; 'best' outputs each system's particle of highest "
                   "reward instead of a draw by the final weights, e.g. 16:rgdm-data:0.25:best; class and attribute rows.")
@click.option("--reward", "reward_path", default="shapectrl/weights/shapes-classifier-pointnet.safetensors",
              show_default=True, help="The reward classifier of the --smc rows and of --redraw's class check.")
@click.option("--redraw", type=click.IntRange(0), default=0, show_default=True,
              help="Draw each --method cloud of a class target that --reward's classifier puts in another class again, "
                   "up to this many times (shapectrl generate --redraw); the row records the extra draws per class.")
@click.option("--tolerance", type=click.FloatRange(0, min_open=True), default=None,
              help="Width of the --smc rows' attribute likelihoods, in training standard deviations  [default: the "
                   "first --method's training tolerance]")
@click.option("--evaluator", default="shapectrl/weights/shapes-classifier-dgcnn.safetensors", show_default=True,
              help="The classifier that scores the samples (not the reward classifier).")
@click.option("--attribute", "attributes", multiple=True, default=DEFAULT_ATTRIBUTES, show_default=True,
              metavar="CLASS:ATTRIBUTE", help="Attribute-control rows (CLASS 'any': the attribute alone).")
@click.option("--no-attributes", is_flag=True, help="Class rows only (no attribute-control rows).")
@click.option("--no-data-row", is_flag=True,
              help="Leave out the data-against-data row (it depends only on -n, --points and --emd-points: one run "
                   "of a split protocol has it).")
@click.option("-n", "n_samples", type=click.IntRange(2), default=64, show_default=True,
              help="Samples per class (and references per class) and attribute targets per row.")
@click.option("--points", type=click.IntRange(1), default=512, show_default=True,
              help="Points per cloud (the shipped models' training size; PointFlow's protocol uses 2,048).")
@click.option("--emd-points", type=click.IntRange(0), default=None,
              help="Points per cloud for the EMD, its first ones (approxmatch costs O(N²) per pair; 0: Chamfer "
                   "only)  [default: all]")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True, help="Reverse sampling steps.")
@solver_option("ancestral")
@click.option("--guidance-scale", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Classifier-free guidance w of every --method model (1: the model itself).")
@click.option("--guidance-window", "guidance_window", default=None, metavar="LO:HI", callback=window_option,
              help="Guide only the diffusion steps LO < t ≤ HI of the models' 1,000 (the model itself elsewhere, one "
                   "network call a step)  [default: every step]")
@precision_option("fp32")
@click.option("--data-dir", default=None, help="Procedural data cache (default: shapectrl's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(methods, prior_path, prior_rounds, class_prior_specs, pool_path, smc_specs, reward_path, redraw, tolerance, evaluator, attributes, no_attributes, no_data_row, n_samples, points, emd_points, steps, solver, guidance_scale, guidance_window, precision, data_dir, seed, threads, out) -> None:
    """Class accuracy, 1-NNA, COV and MMD per class, and attribute errors, of controlled shape models."""
    if prior_rounds and not prior_path:
        raise click.BadParameter("needs --prior (the prior to restrict)", param_hint="--prior-in-class")
    if threads:
        torch.set_num_threads(threads)
    if no_attributes:
        attributes = ()
    solver_name, solver = solver, SOLVERS[solver]
    precision = resolve_precision(precision, torch.device("cpu"))
    from shapectrl.cli.train import default_data_dir

    data_dir = data_dir or str(default_data_dir())
    scorer = ShapeClassifier.load(evaluator).eval()
    models, class_models, class_paths = {}, {}, {}
    for spec in methods:
        general, *own = spec.split(",")
        name, _, path = general.partition("=")
        models[name] = (path, ControlledShapes.load(path))
        class_paths[name] = dict(item.partition("=")[::2] for item in own)
        try:
            class_models[name] = with_class_models(models[name][1], class_paths[name])
        except ValueError as err:
            raise click.BadParameter(f"{spec}: {err}", param_hint="--method") from None
        for model in (models[name][1], *class_models[name].values()):
            set_precision(model.model, precision)
    frames = {m.model.normalisation for _, m in models.values()}
    if len(frames) > 1:
        raise click.BadParameter("the models were trained in different normalisations (different data sets)",
                                 param_hint="--method")
    frame = frames.pop()
    test = _split("test", n_samples, points, data_dir, frame)
    valid = _split("valid", n_samples, points, data_dir, frame)
    emd_points = points if emd_points is None else min(emd_points, points)
    references = {cls: References(_of_class(test, cls), emd_points) for cls in RGDM_CLASSES}
    rows = [] if no_data_row else [_class_rows("data (valid split)", lambda cls, k: _of_class(valid, cls), scorer,
                                               test, references)]
    class_check = ShapeClassifier.load(reward_path).eval() if redraw or prior_rounds else None
    if prior_path:
        prior = set_precision(ShapeDiffusion.load(prior_path).eval(), precision)
        if prior.normalisation != frame:
            raise click.BadParameter("the prior was trained in another normalisation than the models", param_hint="--prior")
        blind = prior.sample_many(n_samples, points, steps, torch.Generator().manual_seed(seed * 1000), solver=solver)
        rows.append(_class_rows("prior (no control)", lambda cls, k: blind, scorer, test, references)
                    | {"model": prior_path})
        if prior_rounds:
            rows.append(_prior_in_class(prior, class_check, prior_rounds, n_samples, points,
                                        steps, solver, seed, scorer, test, references) | {"model": prior_path})
    if class_prior_specs:
        priors = _class_priors(class_prior_specs, frame, precision)
        rows.append(_class_rows("one prior per class", lambda cls, k: priors[cls].sample_many(
            n_samples, points, steps, torch.Generator().manual_seed(seed * 1000 + k), solver=solver), scorer, test,
            references) | {"models": dict(spec.partition("=")[::2] for spec in class_prior_specs)})
    if pool_path:
        pool = ShapePool.load(pool_path)
        if pool.points.shape[1] != points:
            raise click.BadParameter(f"{pool_path}: its clouds have {pool.points.shape[1]} points, not --points {points}",
                                     param_hint="--best-of-pool")
        draw, group = _best_of_pool(pool, next(iter(models.values()))[1].conditions.classes, n_samples, seed)
        rows.append(_class_rows(f"best-of-{group} (prior pool)", draw, scorer, test, references)
                    | {"pool": pool_path, "pool_size": len(pool.points), "pool_seconds": round(pool.seconds, 1),
                       "train_seconds": 0})
    attribute_rows = {}
    for name, (path, general) in models.items():
        extra_draws: dict[str, int] = {}  # per class row, with --redraw

        def sample(y: torch.Tensor, mask: torch.Tensor, g: torch.Generator, general=general, own=class_models[name],
                   count: str | None = None) -> torch.Tensor:
            """Clouds for targets ``y, mask`` (one class or none), drawn by the model of their class where there is one
            (as shapectrl generate draws them); with --redraw, the extra draws are recorded under ``count``."""
            model = own.get(target_class(general.conditions, y, mask), general)
            model.model.eval()
            options = dict(n_points=points, n_sampling_steps=steps, generator=g, guidance_scale=guidance_scale,
                           guidance_window=guidance_window, solver=solver)
            if not redraw:
                return model.sample(y, mask, **options)
            clouds, draws, _ = model.sample_in_class(y, mask, class_check, redraw, **options)
            if count is not None:
                extra_draws[count] = int(draws.sum()) - len(y)
            return clouds

        def draw(cls: str, k: int, conditions=general.conditions, sample=sample) -> torch.Tensor:
            y, mask = conditions.target(cls)
            return sample(y.expand(n_samples, -1), mask.expand(n_samples, -1),
                          torch.Generator().manual_seed(seed * 1000 + k), count=cls)

        row_name = guided_row(name, guidance_scale, guidance_window) + (
            f", off-class clouds redrawn (≤ {redraw} times)" if redraw else "")
        rows.append(_class_rows(row_name, draw, scorer, test, references)
                    | _trained(path)
                    | ({"class_models": {c: _trained(p) for c, p in class_paths[name].items()}} if class_paths[name] else {})
                    | ({"extra_draws": extra_draws} if redraw else {}))
        if attributes:
            attribute_rows[name] = _attribute_rows(sample, general.conditions, frame, general.model.config.n_train_points,
                                                   scorer, test, attributes, n_samples, seed)
    for spec in smc_specs:
        name, sample, calls = _steered(spec, models, prior_path, reward_path, tolerance, points, steps,
                                       guidance_scale, solver, precision)
        conditions = next(iter(models.values()))[1].conditions

        def draw(cls: str, k: int, sample=sample, conditions=conditions) -> torch.Tensor:
            y, mask = conditions.target(cls)
            return sample(y.expand(n_samples, -1), mask.expand(n_samples, -1), torch.Generator().manual_seed(seed * 1000 + k))

        rows.append(_class_rows(name, draw, scorer, test, references) | calls)
        if attributes:
            n_measure = next(iter(models.values()))[1].model.config.n_train_points
            attribute_rows[name] = _attribute_rows(sample, conditions, frame, n_measure, scorer, test, attributes,
                                                   n_samples, seed)
    record = {"evaluator": evaluator, "samples_per_class": n_samples, "points": points, "guidance_scale": guidance_scale,
              "guidance_window": guidance_window, "redraw": redraw, "emd_points": emd_points, "sampling_steps": steps,
              "solver": solver_name, "precision": precision, "seed": seed, "rows": rows, "attributes": attribute_rows,
              "threads": torch.get_num_threads(),
              "command": command_line("benchmarks.shapes_conditional"), "machine": machine_info()}
    emit(record, out, indent=1)


if __name__ == "__main__":
    main()
