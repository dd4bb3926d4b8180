"""``shapectrl generate``: clouds for a target class and attributes from a controlled model, with a
contact sheet and how well they hit the target (an evaluator's class, the measured attributes)."""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import click
from tqdm import tqdm

from common.cli import (
    compute_device,
    compute_options,
    precision_option,
    solver_option,
    usage_errors,
    window_option,
)
from common.runtime import atomic_open
from common.smc import PICKS
from shapectrl.classifier import ShapeClassifier
from shapectrl.conditions import RareTargetWarning
from shapectrl.control import ShapeControlConfig
from shapectrl.io import write_ply
from shapectrl.mesh import MESH_METHODS, Surface, mesh_missing, reconstruct
from shapectrl.pipeline import (
    GUIDANCE,
    PROPOSALS,
    ShapeGenerationConfig,
    ShapeGenerator,
    evaluate,
    score,
)
from shapectrl.render import contact_sheet
from shapectrl.weights import EVALUATOR, REWARD_CLASSIFIER, weight_name, weight_path

DEFAULTS = ShapeGenerationConfig()  # one source of defaults: the Python API's

SHEET = "contact_sheet.png"
MESH_SHEET = "meshes.png"
SUMMARY = "summary.json"


def _parse_attrs(ctx: click.Context, param: click.Parameter, texts: tuple[str, ...]) -> dict[str, float]:
    """``("name=value", ...)`` -> ``{name: value}``; a one-line error for bad syntax or a repeated name."""
    values: dict[str, float] = {}
    for text in texts:
        name, sep, number = text.partition("=")
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not math.isfinite(value):
            raise click.BadParameter(f"expected NAME=VALUE with a finite number, got {text!r}")
        if name.strip() in values:
            raise click.BadParameter(f"attribute {name.strip()!r} given twice")
        values[name.strip()] = value
    return values


def _outputs(out: Path, prefix: str, n_samples: int, overwrite: bool, meshes: bool) -> tuple[list[Path], list[Path]]:
    """The PLY paths of the clouds and of their surfaces (none without ``meshes``); refuses (before
    anything is sampled) if any output already exists."""
    width = max(4, len(str(n_samples - 1)))
    paths = [out / f"{prefix}_{k:0{width}d}.ply" for k in range(n_samples)]
    mesh_paths = [path.with_name(f"{path.stem}_mesh.ply") for path in paths] if meshes else []
    existing = [p for p in [*paths, *mesh_paths, out / SHEET, out / SUMMARY, *([out / MESH_SHEET] if meshes else [])]
                if p.exists()]
    if existing and not overwrite:
        raise click.UsageError(f"{existing[0]} already exists ({len(existing)} of the outputs): "
                               "pass --overwrite or choose another --out or --prefix")
    return paths, mesh_paths


def _caption(predicted: str, prob: float, values: dict[str, float]) -> str:
    return "\n".join([f"{predicted} ({prob:.2f})", *(f"{name} {value:.3f}" for name, value in values.items())])


def _target_text(class_name: str | None, attrs: dict[str, float]) -> str:
    return ", ".join(([class_name] if class_name else []) + [f"{name}={value:g}" for name, value in attrs.items()])


@click.command()
@click.option("--class", "class_name", default=None, help="Target class, e.g. chair.")
@click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE", callback=_parse_attrs,
              help="Target attribute in model units, e.g. chair_back_height=0.6 (repeatable).")
@click.option("-n", "n_samples", type=click.IntRange(1), default=16, show_default=True, help="Clouds to draw.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the PLY files, the contact sheet and summary.json (created if missing).")
@click.option("--method", type=click.Choice(ShapeControlConfig.methods), default=DEFAULTS.method, show_default=True,
              help="Which shipped controlled model to use: rgdm (RGDM over the unlabelled training clouds: an airplane, "
                   "chair or car target, with or without attributes, from a model of its own, "
                   "shapes-rgdm-data-CLASS.safetensors; an attribute alone, and --particles, from "
                   "shapes-rgdm-data.safetensors), ctrl (shapes-ctrl.safetensors) or cond (shapes-cond.safetensors, "
                   "the label-as-input baseline).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A controlled model.safetensors from 'shapectrl train control', for every target (overrides "
                   "--method's shipped files).")
@click.option("--evaluator", "evaluator_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Classifier that scores the class (default: the shipped {EVALUATOR}).")
@click.option("--particles", type=click.IntRange(0), default=DEFAULTS.particles, show_default=True,
              help="Sequential Monte Carlo: K particles per cloud steered from the prior towards "
                   "p_prior(x)*exp(reward) (--reward's classifier and the attribute tolerances), one cloud per K; "
                   "0: sample the controlled model once.")
@click.option("--proposal", type=click.Choice(PROPOSALS), default=DEFAULTS.proposal, show_default=True,
              help="With --particles: move the particles by the prior, or by the controlled model (--method/--model, "
                   "at --guidance-scale).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.temperature,
              show_default=True, help="With --particles: T of exp(reward/T); below 1 sharper than the conditional "
              "(with the controlled model as proposal, T = 0.25 gave 100 % class accuracy on class targets against 98 % "
              "at T = 1, but 94 % on class-and-attribute targets: docs/shapes.md).")
@click.option("--pick", type=click.Choice(list(PICKS)), default=DEFAULTS.pick, show_default=True,
              help="With --particles: each cloud is drawn from its system's particles by their final weights "
                   "(sample: a sample of p_prior*exp(reward/T)), or is the particle the reward likes best (best: a "
                   "selection, sharper and less varied; at T = 0.25 with the model as proposal 96.9 % class "
                   "accuracy on class-and-attribute targets against 93.8 %: docs/shapes.md).")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.tolerance,
              help="With --particles and --attr: the width of the reward's attribute likelihoods, in the attribute's "
                   "training standard deviations (wider: the class weighs more against the attribute)  [default: the "
                   "model's training width]")
@click.option("--reward", "reward_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"The reward classifier that steers --particles and checks the class for --redraw (default: the "
                   f"shipped {REWARD_CLASSIFIER}).")
@click.option("--points", type=click.IntRange(1), default=DEFAULTS.points, show_default=True,
              help="Points per cloud (PointFlow's protocol size; the shipped models were trained on 512, and the "
                   "denoiser's voxel grid reads at most that many, so it runs on any N: docs/shapes.md).")
@click.option("--steps", type=click.IntRange(1), default=DEFAULTS.steps, show_default=True,
              help="Reverse steps; below the model's T a respaced sampler is used.")
@solver_option(DEFAULTS.solver)
@click.option("--guidance-scale", type=click.FloatRange(0), default=DEFAULTS.guidance_scale,
              help="Classifier-free guidance w: ε(z, 0) + w·(ε(z, c) − ε(z, 0)), the empty condition being the model's "
                   "unconditional branch; 1 samples the model itself (two network calls per step otherwise)  [default: "
                   "1 for a --class alone, with --redraw: 6.4 points lower 1-NNA-CD than w = 2 on 300 < t ≤ 1000 at the "
                   f"same class accuracy; {GUIDANCE:g} with --attr, whose errors are lower guided, and with --particles: "
                   "docs/shapes.md]")
@click.option("--guidance-window", default=None, metavar="LO:HI", callback=window_option,
              help="Guide only the diffusion steps LO < t ≤ HI of the model's 1,000 (the model itself, one network call, "
                   "elsewhere; with --particles 0)  [default: every step]")
@click.option("--redraw", type=click.IntRange(0), default=DEFAULTS.redraw, show_default=True,
              help="With --class and --particles 0: draw each cloud that --reward's classifier puts in another class "
                   "again, up to this many times (0: never), so that the clouds are the model's own for the class; the "
                   "evaluator that scores them is another network.")
@precision_option(DEFAULTS.precision)
@click.option("--mesh", "mesh_method", type=click.Choice(MESH_METHODS), is_flag=False, flag_value="offset", default=None,
              help="Also write a surface per cloud, PREFIX_0000_mesh.ply, and meshes.png of them shaded (pymeshlab): "
                   "--mesh alone or --mesh offset: watertight (a thin shell around the ball-pivoting surface); "
                   "--mesh ball-pivoting: through the points themselves, open where the cloud is sparse.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--prefix", default="sample", show_default=True, help="File names are PREFIX_0000.ply, ...")
@click.option("--overwrite", is_flag=True, help="Replace outputs of the same names already in OUT.")
@click.option("--seed", type=int, default=0, show_default=True)
@compute_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def generate(class_name, attrs, n_samples, out, method, model_path, evaluator_path, particles, proposal, temperature,
             pick, tolerance, reward_path, points, steps, solver, guidance_scale, guidance_window, redraw, precision,
             mesh_method, batch_size, prefix, overwrite, seed, device, threads, as_json) -> None:
    """Generate N clouds for one target (a --class, --attr values or both) into OUT.

    Writes OUT/PREFIX_0000.ply, ... in model units, OUT/contact_sheet.png (each cloud captioned with
    the evaluator's class and probability and the measured target attributes) and OUT/summary.json,
    and prints the class accuracy, each attribute's mean absolute error and the sampling time. With
    --mesh also OUT/PREFIX_0000_mesh.ply, ... and OUT/meshes.png.
    Attributes are measured on the first points of each cloud, as many as the model was trained on.
    """
    if class_name is None and not attrs:
        raise click.UsageError("give a target: --class, at least one --attr NAME=VALUE, or both")
    if mesh_method and (missing := mesh_missing()):
        raise click.UsageError(f"--mesh: {missing}")
    dev = compute_device(device, threads)
    with usage_errors():
        config = ShapeGenerationConfig(method, particles, proposal, temperature, pick, tolerance, points, steps,
                                       solver, guidance_scale, guidance_window, redraw, precision)
        generator = ShapeGenerator.load(config, model=model_path, reward=reward_path, device=str(dev))
    try:
        with warnings.catch_warnings(record=True) as rare:
            warnings.simplefilter("always")
            generator.target(class_name, attrs)
    except ValueError as err:
        known = generator.controlled.conditions.classes
        raise click.BadParameter(str(err), param_hint="--class" if class_name is not None and class_name not in known
                                 else "--attr") from None
    for warning in rare:
        click.echo(f"Warning: {warning.message}", err=True)
    evaluator_file = weight_path(evaluator_path or EVALUATOR)
    evaluator = ShapeClassifier.load(evaluator_file).to(dev).eval()
    if class_name is not None and class_name not in evaluator.classes:
        raise click.BadParameter(f"{evaluator_file}: does not know class {class_name!r} "
                                 f"(it knows {', '.join(evaluator.classes)})", param_hint="--evaluator")
    paths, mesh_paths = _outputs(out, prefix, n_samples, overwrite, mesh_method is not None)

    with tqdm(total=n_samples, desc=f"steering {particles} particles" if particles else "sampling", unit="cloud",
              disable=None) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", RareTargetWarning)  # said above, in one line
        result = generator.sample(class_name, attrs, n_samples, seed, batch_size, on_batch=bar.update)
    scores = score(result, evaluator)
    out.mkdir(parents=True, exist_ok=True)
    for file, cloud in zip(paths, result.clouds):
        write_ply(file, cloud)
    per_cloud = [{name: round(float(values[k]), 5) for name, values in scores.measured.items()}
                 for k in range(n_samples)]
    captions = [_caption(c, float(p), v) for c, p, v in zip(scores.classes, scores.probabilities, per_cloud)]
    scale = None if particles and proposal == "prior" else generator.guidance_scale(attrs)
    window = generator.guidance_window(attrs)
    title = f"{_target_text(class_name, attrs)} ({result.description}{_guidance_text(scale, window)})"
    contact_sheet(result.clouds, captions, out / SHEET, title=title)
    t_mesh = time.perf_counter()
    surfaces = _write_surfaces(result.clouds, mesh_paths, mesh_method) if mesh_method else []
    mesh_seconds = time.perf_counter() - t_mesh
    if surfaces:
        contact_sheet(result.clouds, [f"{c}{'' if s is None or s.watertight else ' (open)'}"
                                      for c, s in zip(captions, surfaces)], out / MESH_SHEET,
                      title=f"{title}, {mesh_method} surfaces", surfaces=surfaces)
    summary = {
        "target": {"class": class_name, "attributes": attrs},
        "method": result.description, "model": weight_name(result.model), "evaluator": weight_name(evaluator_file),
        "out": str(out), "clouds": n_samples, "points": generator.points, "attribute_points": result.attribute_points,
        "sampling_steps": min(steps, generator.controlled.model.config.n_steps), "solver": solver,
        "guidance_scale": scale, "guidance_window": window,
        "precision": generator.config.precision, "seconds": round(result.seconds, 2),
        "device": str(dev),
    } | evaluate(result, scores=scores)
    if result.class_check is not None:
        summary["class_check"] = {"reward_classifier": weight_name(weight_path(reward_path or REWARD_CLASSIFIER)),
                                  "rounds": redraw} | asdict(result.class_check)
    steered = result.steering
    if steered is not None:
        summary |= {"particles": particles, "temperature": temperature, "pick": pick,
                    "tolerance": generator.reward.tolerance,
                    "mean_ess": round(float(steered.ess.mean()), 2), "network_calls_per_cloud": steered.network_calls,
                    "mean_reward": round(float(steered.reward.mean()), 4)}
    samples = [{"file": file.name, "class": c, "probability": round(float(p), 5), "attributes": v}
               for file, c, p, v in zip(paths, scores.classes, scores.probabilities, per_cloud)]
    if surfaces:
        made = [s for s in surfaces if s is not None]
        summary["mesh"] = {"method": mesh_method, "made": len(made), "seconds": round(mesh_seconds, 2),
                           "watertight": round(sum(s.watertight for s in made) / max(len(made), 1), 4)}
        for entry, file, surface in zip(samples, mesh_paths, surfaces):
            entry["mesh"] = None if surface is None else {"file": file.name, "watertight": surface.watertight,
                                                         "faces": len(surface.faces)}
    with atomic_open(out / SUMMARY) as handle:
        json.dump(summary | {"samples": samples}, handle, indent=2)
    click.echo(json.dumps(summary) if as_json else _report(summary))


def _write_surfaces(clouds, paths: list[Path], method: str) -> list[Surface | None]:
    """Each cloud's surface by ``method``, written to its path; None (and no file) for a cloud on which
    no triangle could be made."""
    surfaces: list[Surface | None] = []
    for cloud, path in zip(tqdm(clouds, desc=f"meshing ({method})", unit="cloud", disable=None), paths):
        try:
            surface = reconstruct(cloud, method)
        except ValueError:
            surface = None
        else:
            write_ply(path, surface.vertices, surface.faces)
        surfaces.append(surface)
    return surfaces


def _guidance_text(scale: float | None, window: list[int] | tuple[int, int] | None) -> str:
    """``", guidance 2 on 300 < t ≤ 1000"``; empty for the model itself (w = 1) or no model (SMC's prior proposal)."""
    if scale is None or scale == 1:
        return ""
    return f", guidance {scale:g}" + ("" if window is None else f" on {window[0]} < t ≤ {window[1]}")


def _report(summary: dict) -> str:
    """The summary as a few lines for a person."""
    target = summary["target"]
    lines = [(f"wrote {summary['clouds']} clouds of {summary['points']} points, {SHEET} and {SUMMARY} to "
              f"{summary['out']} ({summary['method']}, {summary['sampling_steps']} {summary['solver']} steps"
              + _guidance_text(summary["guidance_scale"], summary["guidance_window"]) +
              f", {summary['precision']}, {summary['seconds']:.1f} s on {summary['device']})")]
    if "particles" in summary:
        lines.append(f"mean ESS {summary['mean_ess']:.1f} of {summary['particles']}; "
                     f"{summary['network_calls_per_cloud']} network evaluations per cloud")
    if "class_check" in summary:
        check = summary["class_check"]
        lines.append(f"class check by the reward classifier: {check['redrawn']} of {summary['clouds']} clouds drawn "
                     f"again (extra draws: {check['extra_draws']}), {check['off_class']} still off-class after "
                     f"{check['rounds']} rounds")
    if "mesh" in summary:
        mesh = summary["mesh"]
        lines.append(f"{mesh['made']} {mesh['method']} surfaces and {MESH_SHEET} in {mesh['seconds']:.1f} s, "
                     f"{mesh['watertight']:.0%} of them watertight")
    if target["class"] is not None:
        lines.append(f"class accuracy ({target['class']}): {summary['class_accuracy']:.3f}")
    lines += [f"{name}: mean |measured - target| = {mae:.4f} (target {target['attributes'][name]:g})"
              for name, mae in summary["attribute_mae"].items()]
    return "\n".join(lines)
