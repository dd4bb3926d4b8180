"""``molctrl generate``: molecules with given properties (or a maximised RDKit score), scored honestly."""
from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource
from tqdm import tqdm

from common.cli import compute_options, precision_option, solver_option, window_option
from common.smc import PICKS
from molctrl.data.qm9 import PROPERTY_UNITS
from molctrl.pipeline import DEFAULT_WINDOW, GenerationConfig
from molctrl.steer import PROPOSALS

DEFAULTS = GenerationConfig()  # one source of defaults: the Python API's

SYMBOLS = {"alpha": "alpha", "gap": "gap", "homo": "HOMO", "lumo": "LUMO", "mu": "mu", "Cv": "Cv"}  # PNG legends


@click.command()
@click.option("--target", "targets", multiple=True, metavar="NAME=VALUE",
              help="A property target, e.g. alpha=80 (Bohr^3), gap=6500 (meV), mu=3 (D); repeat to combine.")
@click.option("--maximize", type=click.Choice(["qed", "logp", "sa"]), default=None,
              help="Maximise an RDKit score instead (sa: the easiest to synthesise).")
@click.option("-n", "n_molecules", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .sdf (targets and predictions "
              "as SDF properties); a PNG grid is written beside it.")
@click.option("--particles", type=click.IntRange(min=0), default=DEFAULTS.particles, show_default=True,
              help="Sequential Monte Carlo: K particles per molecule steered towards p_prior(x)*exp(reward/T), each "
                   "molecule from its own K (docs/steered.md: the lowest MAE); 0: sample --method once.")
@click.option("--proposal", type=click.Choice(list(PROPOSALS)), default=DEFAULTS.proposal, show_default=True,
              help="With --particles: the kernel particles move by (the prior, the guided prior, or a conditioned model).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --particles: T of exp(reward/T)  [default: 0.25 for --target, i.e. p_prior(x)*p(y|x)^4, "
                   "sharper than the conditional (T = 1): the lowest MAE of T = 1, 0.5, 0.25 in "
                   "docs/steered.md; 0.002 for --maximize: with --potential-from's default, mean QED 0.589 of 500 "
                   "molecules against best-of-16's 0.572 at the same network evaluations, with 95 % unique molecules "
                   "against 98 % (docs/conditioned.md)]")
@click.option("--potential-from", type=click.IntRange(min=1), default=None, metavar="T",
              help="With --particles: the reward steers the particles (and resamples them) from diffusion step T of "
                   "the prior's 1,000 down to 0, ramping in  [default: 400 for --target; 100 for --maximize, where x̂₀'s "
                   "score is a poor guide earlier: mean QED 0.589 from 100 against 0.572 from 400 (docs/conditioned.md)]")
@click.option("--pick", type=click.Choice(list(PICKS)), default=None,
              help="With --particles: each molecule is its system's particle drawn by the final weights (sample: "
                   "a sample of p_prior*exp(reward/T)) or the one of highest final reward (best: a selection "
                   "among the steered particles)  [default: best for --target: a lower MAE on all six properties "
                   "at the same cost, 99 % unique (docs/steered.md); sample for --maximize]")
@click.option("--method", type=click.Choice(["rgdm", "ctrl", "guidance"]), default="rgdm", show_default=True,
              help="With --particles 0: rgdm / ctrl, a shipped (or --model) conditioned model; guidance, the prior "
                   "steered by the reward predictor's gradient (reconstruction guidance).")
@click.option("--model", "model_path", default=None, help="A conditioned model.safetensors from 'molctrl finetune' "
              "(the rgdm / ctrl proposal, or --method rgdm / ctrl; the prior itself for --method guidance).")
@click.option("--prior", "prior_path", default=None, help="With --particles: the prior to steer (default: the shipped one).")
@click.option("--reward-model", default=DEFAULTS.reward_model, show_default=True,
              help="Predictor for --method guidance (reconstruction guidance through x̂₀), or a noise-aware "
                   "predictor ('molctrl train predictor --noise-aware') for classifier guidance.")
@click.option("--reward", "judge", type=click.Choice(["model", "xtb", "both"]), default=None,
              help="With --particles and --target: what the final weights judge. model: the --reward-model "
                   "predictor; xtb: GFN2-xTB recomputed for every finished valid particle and mapped onto the DFT "
                   "scale (gap, homo, lumo, mu, alpha); both: the predictor's and xTB's likelihoods together (xTB on "
                   "gap, homo, lumo, mu). The predictor always steers the path (docs/physics.md). "
                   "[default: both where tblite is installed (lower MAE by the evaluator and by xTB in "
                   "docs/physics.md, at ~1.25x the time); else model]")
@click.option("--judge-model", default=None, metavar="PREDICTOR",
              help="With --particles and --target: a second predictor (shipped name or model.safetensors) that the "
                   "final weights read in --reward-model's place, which still steers the path: a larger network "
                   "costs little when it reads only the finished particles  [default: qm9-noh-e3nn-Db-dipole-96 "
                   "when no target is one GFN2-xTB judges (alpha, Cv: lower evaluator errors at the same cost in "
                   "docs/steered.md); else --reward-model]")
@click.option("--verify", is_flag=True, help="Recompute the targeted properties by GFN2-xTB (tblite) on the DFT scale: "
              "SDF fields xtb_*, and the physics MAE printed beside the evaluator's.")
@click.option("--scale", type=float, default=DEFAULTS.scale, show_default=True, help="Guidance scale of --method guidance.")
@click.option("--guidance-window", "window", default=None, metavar="LO:HI", callback=window_option,
              help="--method guidance: guide only the diffusion steps LO < t ≤ HI of the prior's 1,000 "
                   f"[default: {DEFAULT_WINDOW[0]}:{DEFAULT_WINDOW[1]} for reconstruction guidance, whose effect lies in the last 15 % of "
                   "the chain in docs/conditioned.md, at a third of the time of 0:1000; the whole chain for "
                   "classifier guidance].")
@click.option("--guidance-scale", type=click.FloatRange(0), default=DEFAULTS.guidance_scale, show_default=True,
              help="rgdm / ctrl: classifier-free guidance w (1: the model itself; w > 1 sharpens the condition "
                   "at two network calls per step).")
@click.option("--evaluator", default="qm9-noh-egnn-Da", show_default=True,
              help="Predictor that scores the molecules (keep it different from the reward's architecture).")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULTS.steps, show_default=True, help="Sampling steps.")
@solver_option(DEFAULTS.solver)
@precision_option(DEFAULTS.precision)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None, help="Grid image (default: OUT.png).")
@compute_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def generate(targets, maximize, n_molecules, out, particles, proposal, temperature, potential_from, pick, method, model_path,
             prior_path, reward_model, judge, judge_model, verify, scale, window, guidance_scale, evaluator, steps, solver, precision, seed, png_path, device, threads,
             as_json) -> None:
    """Generate molecules for property targets (or a maximised score) and report validity, uniqueness,
    novelty, stability and the evaluator's MAE to the targets."""
    from common.cli import compute_device, usage_errors
    from molctrl.depict import grid_png
    from molctrl.generate import parse_targets
    from molctrl.io import write_molecules
    from molctrl.physics import tblite_missing
    from molctrl.pipeline import GenerationConfig, MoleculeGenerator, evaluate
    from molctrl.weights import load_predictor

    if bool(targets) == bool(maximize):
        raise click.UsageError("give either --target NAME=VALUE (one or more) or --maximize")
    if Path(out).suffix.lower() != ".sdf":
        raise click.BadParameter(f"{out}: expected a .sdf file name", param_hint="--out")
    try:
        wanted = parse_targets(targets)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--target") from None
    if particles and click.get_current_context().get_parameter_source("method") is not ParameterSource.DEFAULT:
        raise click.UsageError("--method samples each molecule once: pass --particles 0 with it "
                               "(or --proposal to steer with that kernel)")
    if judge not in (None, "model") and not (particles and wanted):
        raise click.UsageError(f"--reward {judge} judges the particles of property targets: use it with --target "
                               "and --particles")
    missing = tblite_missing()
    if (judge not in (None, "model") or verify) and missing:
        raise click.UsageError(f"{'--verify' if verify else '--reward ' + judge}: {missing}")
    dev = compute_device(device, threads)
    with usage_errors():
        config = GenerationConfig("smc" if particles else method, particles, proposal, temperature, potential_from, judge,
                                  scale, window, guidance_scale, steps, solver, reward_model, precision, pick,
                                  judge_model)
        generator = MoleculeGenerator.load(config, maximize=maximize, model=model_path, prior=prior_path,
                                           device=str(dev))
        scorer = load_predictor(evaluator).eval() if wanted else None
        with tqdm(total=n_molecules, desc=f"steering {particles} particles" if particles else f"sampling ({method})",
                  unit="mol", disable=None) as bar:
            result = generator.sample(wanted, n_molecules, seed, on_batch=bar.update)
    molecules = result.molecules
    summary = evaluate(molecules, wanted, scorer, maximize, physics=verify, setting=generator.model.config.setting)
    legends = [[f"{SYMBOLS[p]} {wanted[p]:g} -> {m.properties[f'predicted_{p}']:.3g}" for p in wanted]
               + ([f"{maximize} {m.properties[maximize]:.3f}" if m.properties[maximize] != "invalid" else "invalid"]
                  if maximize else []) for m in molecules]
    png = png_path or str(Path(out).with_suffix(".png"))
    write_molecules(out, molecules)
    grid_png(molecules, ["; ".join(parts) for parts in legends], png)
    report = result.steering
    if report is not None:
        summary |= {"particles": particles, "proposal": proposal, "temperature": result.settings.temperature,
                    "potential_from": result.settings.potential_from, "pick": result.settings.pick,
                    "final_weights": result.final_weights, "judge_model": result.judge_model,
                    "mean_ess": round(float(report.ess.mean()), 2), "network_calls_per_molecule": report.network_calls,
                    "systems_without_a_valid_particle": report.no_valid}
    guidance = generator.guidance
    summary |= {"method": config.method, "guidance_scale": guidance_scale,
                "guidance_window": list(guidance.window or (0, generator.model.diffusion.n_steps)) if guidance else None,
                "sampling_steps": steps, "solver": solver, "precision": generator.config.precision, "seconds": round(result.seconds, 1), "out": out, "png": png}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"wrote {len(molecules)} molecules to {out} and {png} in {result.seconds:.1f} s "
               f"({result.description}, {steps} {solver} steps, {generator.config.precision})")
    if report is not None:
        click.echo(f"  mean ESS        {summary['mean_ess']:.1f} of {particles}; "
                   f"{report.network_calls} network evaluations per molecule")
    for key in ("validity", "uniqueness", "novelty", "mol_stability"):
        click.echo(f"  {key:15s} {summary[key]:.3f}")
    for name in wanted:
        physics = summary.get(f"physics_mae_{name}")
        click.echo(f"  MAE {name:10s} {summary[f'mae_{name}']:.4g} {PROPERTY_UNITS[name]} (evaluator {evaluator})"
                   + ("" if physics is None else f"; {physics:.4g} by GFN2-xTB on the DFT scale "
                      f"({summary['physics_judged']} of {len(molecules)} judged)"))
    if verify:
        from molctrl.cli.evaluate import physics_text

        click.echo(physics_text(summary))
    if maximize:
        click.echo(f"  mean {maximize:9s} {summary[f'mean_{maximize}']:.3f}")
