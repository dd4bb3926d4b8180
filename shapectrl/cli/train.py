"""``shapectrl train``: train the shape prior and the shape classifiers (checkpoints, resume, progress)."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import click
import torch

from common.cli import comma_names, compute_device, compute_options
from common.runs import log_eval, run_record, train_config, train_in_run
from common.runtime import seed_everything
from common.schedules import SCHEDULES
from common.training import LR_SCHEDULES, TrainConfig, Trainer, checkpoint_in
from common.weights import SUFFIX
from shapectrl.classifier import (
    CLASSIFIER_ARCHITECTURES,
    ShapeClassifier,
    ShapeClassifierConfig,
)
from shapectrl.conditions import ShapeConditions, measure_attributes
from shapectrl.control import (
    ShapeControlConfig,
    ShapeTargets,
    make_objective,
)
from shapectrl.data.attributes import ATTRIBUTES
from shapectrl.data.families import CLASSES, local_labels
from shapectrl.data.normalisation import Normalisation
from shapectrl.data.procedural import ProceduralShapes
from shapectrl.denoisers import ARCHITECTURES
from shapectrl.prior import ShapeBatches, ShapeDiffusion, ShapePriorConfig
from shapectrl.reward import ShapeReward


def default_data_dir() -> Path:
    """Where procedural data sets are cached: ``$SHAPECTRL_CACHE`` or ``~/.cache/shapectrl``."""
    return Path(os.environ.get("SHAPECTRL_CACHE", Path.home() / ".cache" / "shapectrl"))


def data_options(fn: Callable) -> Callable:
    """The options that choose the procedural training set (shared by every ``train`` command)."""
    options = [
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Cache folder of the procedural splits  [default: $SHAPECTRL_CACHE or ~/.cache/shapectrl]"),
        click.option("--per-class", type=click.IntRange(1), default=2000, show_default=True,
                     help="Training shapes per class (generated once, ~1.5 ms per shape, then cached)."),
        click.option("--data-points", type=click.IntRange(1), default=2048, show_default=True,
                     help="Points stored per shape; each step trains on a random subset of --points of them."),
        click.option("--classes", "class_text", default=",".join(CLASSES), show_default=True,
                     help="Comma-separated classes to train on."),
        click.option("--data-seed", type=click.IntRange(0), default=0, show_default=True,
                     help="Data-set seed (which shape seeds the split takes)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


LR_SCHEDULE = click.option(
    "--lr-schedule", type=click.Choice(LR_SCHEDULES), default="constant", show_default=True,
    help="cosine: the learning rate falls to 0 at --steps after the warm-up (set --steps to the run's real length; a "
         "resume that changes --steps changes the curve).")


def train_options(fn: Callable) -> Callable:
    """Optimisation, device and run-folder options shared by every ``train`` command."""
    options = [
        click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Folder for checkpoint.safetensors, model.safetensors (EMA weights), run.json and train logs."),
        click.option("--steps", type=click.IntRange(1), default=None, help="Total optimisation steps  [default: prior 20000, classifier 3000]"),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
                     help="Clouds per step and process."),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=None,
                     help="Learning rate  [default: prior 2e-4 constant, classifier 1e-3 with cosine decay]"),
        click.option("--warmup", type=click.IntRange(0), default=0, show_default=True, help="Linear warm-up steps."),
        click.option("--ema", "ema_decay", type=float, default=0.999, show_default=True, help="EMA decay of the weights."),
        click.option("--checkpoint-every", type=click.IntRange(1), default=500, show_default=True),
        click.option("--log-every", type=click.IntRange(1), default=100, show_default=True,
                     help="Steps between progress lines (when stderr is not a terminal)."),
        click.option("--seed", type=int, default=0, show_default=True),
        compute_options,
        click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoint.safetensors with its run.json settings "
                     "(only --steps may change, to train longer)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group()
def train() -> None:
    """Train a shape model on the procedural data set (single process, or several under torchrun)."""


def _data_record(data_dir: Path | None, per_class: int, data_points: int, class_text: str, data_seed: int,
                 n_points: int) -> dict:
    if n_points > data_points:
        raise click.BadParameter(f"cannot train on {n_points} points per cloud when shapes store {data_points} "
                                 "(raise --data-points)", param_hint="--points")
    return {"dir": str(data_dir or default_data_dir()), "per_class": per_class, "data_points": data_points,
            "classes": list(comma_names(class_text, CLASSES, "--classes", "class")), "seed": data_seed, "points": n_points}


def _load(data: dict, split: str = "train", per_class: int | None = None,
          normalisation: Normalisation | None = None) -> ProceduralShapes:
    """A split of the run's data set (built into the cache the first time), in ``normalisation``'s frame
    (default: the training split's own)."""
    t0 = time.perf_counter()
    try:
        shapes = ProceduralShapes(split, per_class or data["per_class"], data["data_points"], data["classes"],
                                  data["seed"], data["dir"], normalisation)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    how = f"built in {time.perf_counter() - t0:.1f} s" if shapes.build_seconds else "cached"
    click.echo(f"{split}: {len(shapes)} shapes x {shapes.n_points} points ({how}: {shapes.cache_path})", err=True)
    return shapes


def _initial_prior(path: str, neighbours: int = 0) -> ShapeDiffusion:
    """The unconditional prior in ``path`` that ``train prior --init`` goes on from, grown a local branch of
    ``neighbours`` when it has none (:meth:`ShapeDiffusion.with_neighbours`)."""
    start = ShapeDiffusion.load(path)
    if start.config.cond_dim:
        raise click.BadParameter(f"{path}: a controlled model; --init takes an unconditional prior", param_hint="--init")
    if not neighbours or start.config.neighbours == neighbours:
        return start
    try:
        return start.with_neighbours(neighbours)
    except ValueError as err:
        raise click.BadParameter(f"{path}: {err}", param_hint="--neighbours") from None


def _fit(model: torch.nn.Module, batches, train_cfg: TrainConfig, run: Path, record: dict,
         device: torch.device, resume: bool, on_checkpoint=None, what: str = "shapes") -> Trainer:
    """:func:`common.runs.train_in_run` on ``len(batches)`` shapes (``what`` they are: training shapes, targets)."""
    return train_in_run(model, batches, train_cfg, run, record, device, resume,
                        f"{len(batches)} {what} x {record['data']['points']} points", on_checkpoint)


@train.command()
@train_options
@data_options
@click.option("--arch", type=click.Choice(ARCHITECTURES), default="pvd", show_default=True,
              help="pvd: point-voxel network (per-point MLP + coarse voxel convolutions); transformer: induced-set "
                   "attention; pointnet: per-point MLP + max pool only (the slow reference). All run on any N "
                   "(benchmarks/shapes_speed.py times them).")
@click.option("--points", type=click.IntRange(1), default=512, show_default=True,
              help="Points per cloud while training (sampling may use more).")
@click.option("--width", type=click.IntRange(1), default=128, show_default=True, help="Features per point.")
@click.option("--depth", type=click.IntRange(1), default=4, show_default=True, help="Blocks.")
@click.option("--resolution", type=click.IntRange(2), default=8, show_default=True, help="pvd: voxel grid R (R³ cells).")
@click.option("--voxel-channels", type=click.IntRange(1), default=32, show_default=True, help="pvd: features per cell.")
@click.option("--neighbours", type=click.IntRange(0), default=0, show_default=True,
              help="pvd: give every block a local branch over each point's N nearest anchors (a cloud's first "
                   "--points points, those the voxel grid reads; shapectrl/denoisers.py, LocalMax; 0: none). With "
                   "--init the prior's network grows the branch, which starts at zero.")
@click.option("--inducing", type=click.IntRange(1), default=32, show_default=True,
              help="transformer: inducing vectors per block.")
@click.option("--diffusion-steps", type=click.IntRange(1), default=1000, show_default=True, help="T of the noise schedule.")
@click.option("--schedule", type=click.Choice(list(SCHEDULES)), default="linear", show_default=True,
              help="Noise schedule (linear: PVD's β from 1e-4 to 0.02).")
@click.option("--preview-every", type=click.IntRange(0), default=0, show_default=True,
              help="Every this many steps (a multiple of --checkpoint-every), sample a few clouds with the EMA "
                   "weights into RUN_DIR/previews/ as PLY (0: never).")
@click.option("--preview-samples", type=click.IntRange(1), default=4, show_default=True)
@click.option("--preview-steps", type=click.IntRange(1), default=50, show_default=True, help="Reverse steps of a preview.")
@click.option("--init", "init_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Go on from this unconditional prior's weights (e.g. shapectrl/weights/shapes-prior.safetensors) "
                   "with a fresh optimiser: its network replaces --arch ... --schedule (--points still sets the "
                   "training size) and its normalisation the split's; --classes may be any of its classes (one "
                   "class: a prior of that class alone, fine-tuned from the prior of all).")
@LR_SCHEDULE
def prior(run_dir, steps, batch_size, lr, warmup, ema_decay, checkpoint_every, log_every, seed, device, threads, resume,
          data_dir, per_class, data_points, class_text, data_seed, arch, points, width, depth, resolution,
          voxel_channels, neighbours, inducing, diffusion_steps, schedule, preview_every, preview_samples, preview_steps,
          init_path, lr_schedule) -> None:
    """Train the unconditional shape prior (point-cloud ε-network + Gaussian diffusion on R^{N×3}).

    Clouds are in the training split's global normalisation (PointFlow's protocol), which model.safetensors
    keeps so that samples can be returned to model units (shapectrl sample).
    """
    dev = compute_device(device, threads)
    if preview_every % checkpoint_every:
        raise click.BadParameter(f"{preview_every} is not a multiple of --checkpoint-every {checkpoint_every}",
                                 param_hint="--preview-every")
    start = _initial_prior(init_path, neighbours) if init_path and not resume else None
    network = (start.config if start else
               ShapePriorConfig(arch=arch, width=width, depth=depth, resolution=resolution, voxel_channels=voxel_channels,
                                n_inducing=inducing, n_steps=diffusion_steps, schedule=schedule, neighbours=neighbours))
    fresh = {
        "model": asdict(replace(network, n_train_points=points)),
        "init": init_path,
        "train": asdict(TrainConfig(steps=steps or 20_000, batch_size=batch_size, lr=lr or 2e-4, warmup_steps=warmup,
                                    lr_schedule=lr_schedule,
                                    ema_decay=ema_decay, checkpoint_every=checkpoint_every, log_every=log_every,
                                    seed=seed)),
        "data": _data_record(data_dir, per_class, data_points, class_text, data_seed, points),
        "preview": {"every": preview_every, "samples": preview_samples, "steps": preview_steps},
    }
    record = run_record(run_dir, resume, fresh)
    train_cfg = train_config(record, steps)
    seed_everything(train_cfg.seed)
    if record.get("init"):
        start = start or _initial_prior(record["init"], record["model"].get("neighbours", 0))
        unseen = [c for c in record["data"]["classes"] if c not in start.classes]
        if unseen:
            raise click.ClickException(f"{record['init']}: trained on {', '.join(start.classes)}, not on "
                                       f"{', '.join(unseen)} (--classes)")
    shapes = _load(record["data"], normalisation=start.normalisation if start else None)
    model = ShapeDiffusion(ShapePriorConfig(**record["model"]), shapes.normalisation, shapes.classes)
    if start and not (resume and checkpoint_in(run_dir)):
        model.load_state_dict(start.state_dict())
    batches = ShapeBatches(shapes.normalised_points, train_cfg.batch_size, record["data"]["points"], seed=train_cfg.seed)
    preview = record["preview"]

    def write_previews(step: int, ema_model: ShapeDiffusion) -> None:
        if not preview["every"] or step % preview["every"]:
            return
        from shapectrl.io import write_ply

        t0 = time.perf_counter()
        ema_model.eval()
        try:
            clouds = ema_model.sample(preview["samples"], record["data"]["data_points"], preview["steps"],
                                      torch.Generator().manual_seed(step))
            for k, cloud in enumerate(ema_model.denormalise(clouds.cpu())):
                write_ply(run_dir / "previews" / f"step{step:07d}_{k:02d}.ply", cloud)
        except (RuntimeError, ValueError, OSError) as err:  # a preview must never kill a long training run
            click.echo(f"preview at step {step} failed: {err!r}", err=True)
            return
        finally:
            ema_model.train()
        click.echo(f"previews of step {step} -> {run_dir / 'previews'} ({time.perf_counter() - t0:.1f} s)", err=True)

    _fit(model, batches, train_cfg, run_dir, record, dev, resume, write_previews)


@train.command()
@train_options
@data_options
@click.option("--arch", type=click.Choice(CLASSIFIER_ARCHITECTURES), default="pointnet", show_default=True,
              help="pointnet: shared MLP + max/mean pool (reward classifier); dgcnn: EdgeConv on a kNN graph "
                   "(an independent evaluator).")
@click.option("--points", type=click.IntRange(1), default=512, show_default=True, help="Points per cloud while training.")
@click.option("--valid-per-class", type=click.IntRange(1), default=40, show_default=True,
              help="Validation shapes per class: accuracy and the temperature calibration at every checkpoint.")
@click.option("--noise-aware", "noise_prior", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PRIOR", help="Train on clouds noised by this prior's schedule (its model.safetensors), with t as input "
                                    "(for classifier guidance).")
def classifier(run_dir, steps, batch_size, lr, warmup, ema_decay, checkpoint_every, log_every, seed, device, threads,
               resume, data_dir, per_class, data_points, class_text, data_seed, arch, points, valid_per_class,
               noise_prior) -> None:
    """Train a shape classifier p(class | points); each checkpoint fits its softmax temperature on
    the validation split and logs accuracy to RUN_DIR/eval.jsonl."""
    dev = compute_device(device, threads)
    data = _data_record(data_dir, per_class, data_points, class_text, data_seed, points)
    config = ShapeClassifierConfig(arch=arch, classes=tuple(data["classes"]))
    if noise_prior:
        noise = ShapeDiffusion.load(noise_prior).config
        config.noise_schedule, config.noise_steps = noise.schedule, noise.n_steps
    fresh = {"model": asdict(config),
             "train": asdict(TrainConfig(steps=steps or 3000, batch_size=batch_size, lr=lr or 1e-3,
                                         warmup_steps=warmup, lr_schedule="cosine", ema_decay=ema_decay,
                                         checkpoint_every=checkpoint_every, log_every=log_every, seed=seed)),
             "data": data | {"valid_per_class": valid_per_class}}
    record = run_record(run_dir, resume, fresh)
    train_cfg = train_config(record, steps)
    seed_everything(train_cfg.seed)
    shapes = _load(record["data"])
    valid = _load(record["data"], "valid", record["data"]["valid_per_class"], shapes.normalisation)
    model = ShapeClassifier(ShapeClassifierConfig(**record["model"]), shapes.normalisation)
    n_points = record["data"]["points"]
    batches = ShapeBatches(shapes.normalised_points, train_cfg.batch_size, n_points,
                           model.labels_from_dataset(shapes.labels), seed=train_cfg.seed)
    valid_points = valid.normalised_points[:, :n_points]  # surface samples are i.i.d.: the first N are a random subset
    valid_labels = model.labels_from_dataset(valid.labels)

    def evaluate(step: int, ema_model: ShapeClassifier) -> None:
        t0 = time.perf_counter()
        scores = ema_model.calibrate(valid_points, valid_labels)
        log_eval(run_dir / "eval.jsonl", {"step": step, "split": "valid", "shapes": len(valid), "points": n_points,
                                      **scores, "seconds": round(time.perf_counter() - t0, 1)})

    _fit(model, batches, train_cfg, run_dir, record, dev, resume, evaluate)


CONTROL = ShapeControlConfig  # the defaults of 'train control'


@train.command()
@train_options
@data_options
@click.option("--method", type=click.Choice(CONTROL.methods), default=CONTROL.method, show_default=True,
              help="rgdm: RGDM (a pool resampled by the reward, see --proposal); ctrl: KL-regularised fine-tuning through "
                   "the sampler; cond: the baseline, labels of the training clouds as input.")
@click.option("--prior", "prior_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The unconditional prior (a model.safetensors from 'shapectrl train prior'; required unless --resume).")
@click.option("--reward", "reward_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The reward classifier (a model.safetensors from 'shapectrl train classifier', not the evaluator; "
                   "required unless --resume).")
@click.option("--points", type=click.IntRange(1), default=512, show_default=True,
              help="Points per cloud while training (the pool and CTRL's rollouts use this size too).")
@click.option("--attributes", "attribute_text", default=",".join(CONTROL.attributes), show_default=True,
              help=f"Comma-separated attributes to condition on (some of {', '.join(ATTRIBUTES)}); empty: class only.")
@click.option("--p-class", type=click.FloatRange(0, 1), default=None,
              help=f"Probability that a training target conditions on the class  [default: {CONTROL.p_class}; 1 with "
                   "--target-classes]")
@click.option("--target-classes", "target_class_text", default="",
              help="Comma-separated classes: train targets of these classes alone, each conditioned on its class (a "
                   "model of one class: RGDM's pool stays every unlabelled training cloud, the reward picks the class's; "
                   "empty: every class of the data).")
@click.option("--p-attribute", type=click.FloatRange(0, 1), default=CONTROL.p_attribute, show_default=True,
              help="Probability that a training target conditions on each attribute that applies to its class.")
@click.option("--tolerance", type=click.FloatRange(0, min_open=True), default=CONTROL.tolerance, show_default=True,
              help="Width of an attribute's likelihood, in training standard deviations.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=CONTROL.temperature, show_default=True,
              help="rgdm: τ of the pay-off distribution p(x)·exp(r/τ).")
@click.option("--proposal", type=click.Choice(CONTROL.proposals), default=CONTROL.proposal, show_default=True,
              help="rgdm: the pool of the pay-off distribution p(x)·exp(r/τ). prior: --pool-size samples of the "
                   "prior; data: the unlabelled training clouds (the reward reads them, their labels are not used).")
@click.option("--pool-size", type=click.IntRange(1), default=CONTROL.pool_size, show_default=True, help="rgdm: prior clouds in the pool.")
@click.option("--pool-steps", type=click.IntRange(1), default=CONTROL.pool_steps, show_default=True, help="rgdm: sampling steps of the pool.")
@click.option("--sampling-steps", type=click.IntRange(1), default=CONTROL.sampling_steps, show_default=True, help="ctrl: steps of a rollout.")
@click.option("--alpha", type=click.FloatRange(0, min_open=True), default=CONTROL.alpha, show_default=True, help="ctrl: KL weight α.")
@click.option("--grad-steps", type=click.IntRange(1), default=CONTROL.grad_steps, show_default=True,
              help="ctrl: gradients through the last k transitions, k uniform in [1, grad-steps].")
@click.option("--score-early", is_flag=True,
              help="ctrl: add the score-function gradient of the transitions before those k (where the class is "
                   "chosen; common/ctrl.py), each rollout's baseline the others of its target.")
@click.option("--samples-per-target", type=click.IntRange(2), default=CONTROL.samples_per_target, show_default=True,
              help="ctrl with --score-early: rollouts per target (a batch holds batch-size / this targets).")
@click.option("--cond-lr-scale", type=click.FloatRange(0, min_open=True), default=CONTROL.cond_lr_scale, show_default=True,
              help="Learning rate of the condition embedding relative to the rest.")
@click.option("--neighbours", type=click.IntRange(0), default=0, show_default=True,
              help="Before fine-tuning, give the prior's pvd network a local branch over each point's N nearest "
                   "anchors (a cloud's first points, as many as the prior was trained on), starting at zero "
                   "(shapectrl/denoisers.py, LocalMax; 0: the prior's network as it is).")
@click.option("--freeze-backbone", is_flag=True, help="Train the condition embedding only.")
@LR_SCHEDULE
def control(run_dir, steps, batch_size, lr, warmup, ema_decay, checkpoint_every, log_every, seed, device, threads,
            resume, lr_schedule, data_dir, per_class, data_points, class_text, data_seed, prior_path, reward_path, points,
            attribute_text, target_class_text, p_class, freeze_backbone, **options) -> None:
    """Add class and attribute control to a shape prior (RGDM, CTRL or the label-as-input baseline).

    Targets are the classes and measured attributes of the training split, a random subset of them
    conditioned per target, so that one model serves a class, attributes, or both. The weights in
    RUN_DIR/model.safetensors are what 'shapectrl generate --model' reads.
    """
    dev = compute_device(device, threads)
    attributes = comma_names(attribute_text, ATTRIBUTES, "--attributes", "attribute", empty=True)
    for value, hint in ((prior_path, "--prior"), (reward_path, "--reward")):
        if value is None and not resume:
            raise click.BadParameter("required for a new run", param_hint=hint)
    target_classes = comma_names(target_class_text, CLASSES, "--target-classes", "class", empty=True)
    if p_class is None:
        p_class = 1.0 if target_classes else CONTROL.p_class
    try:
        config = ShapeControlConfig.from_options(options, attributes=attributes, p_class=p_class,
                                                 target_classes=target_classes, train_backbone=not freeze_backbone)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    fresh = {"control": asdict(config), "prior": str(prior_path), "reward": str(reward_path),
             "train": asdict(TrainConfig(steps=steps or 3000, batch_size=batch_size, lr=lr or 1e-4, warmup_steps=warmup,
                                         lr_schedule=lr_schedule,
                                         ema_decay=ema_decay, checkpoint_every=checkpoint_every, log_every=log_every,
                                         seed=seed)),
             "data": _data_record(data_dir, per_class, data_points, class_text, data_seed, points)}
    record = run_record(run_dir, resume, fresh)
    train_cfg = train_config(record, steps)
    seed_everything(train_cfg.seed)
    objective, batches = control_objective(record, train_cfg, run_dir / f"pool{SUFFIX}")
    _fit(objective, batches, train_cfg, run_dir, record, dev, resume, what="target shapes")


def control_objective(record: dict, train_cfg: TrainConfig, pool_path: Path | None = None) -> tuple[torch.nn.Module, object]:
    """The objective and batch source of a control run's ``record`` (its run.json): the prior, reward,
    data, attributes and targets it names, :func:`shapectrl.control.make_objective`."""
    config = ShapeControlConfig(**record["control"])
    prior_model = ShapeDiffusion.load(record["prior"])
    classifier_model = ShapeClassifier.load(record["reward"])
    shapes = _load(record["data"])
    if shapes.normalisation != prior_model.normalisation:
        raise click.ClickException(f"{record['prior']}: the prior was trained in another normalisation than this data "
                                   "set's (use the same --classes, --per-class, --data-points and --data-seed)")
    n_points = record["data"]["points"]
    click.echo(f"measuring {len(config.attributes)} attributes of {len(shapes)} training shapes", err=True)
    values = measure_attributes(shapes.points[:, :n_points], config.attributes)
    try:
        labels = local_labels(shapes.labels, shapes.classes)
        conditions = ShapeConditions.fit(values, labels, shapes.classes, config.attributes)
        reward = ShapeReward(classifier_model, conditions, config.tolerance)
        targets = ShapeTargets(conditions, labels, values, config)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    try:
        return make_objective(config, prior_model, reward, shapes.normalised_points, targets, train_cfg.batch_size,
                              n_points, train_cfg.seed, pool_path)
    except ValueError as err:  # e.g. --neighbours for a prior that cannot grow a local branch
        raise click.ClickException(f"{record['prior']}: {err}") from None
