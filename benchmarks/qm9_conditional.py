"""The conditional QM9 benchmark (EDM/EEGSDE protocol) at CPU scale.

    python -m benchmarks.qm9_conditional --setting qm9-noh -n 500 --steps 100 --seed 0 \\
        --method ctrl=molctrl/weights/qm9-noh-ctrl.safetensors --method rgdm=molctrl/weights/qm9-noh-rgdm.safetensors \\
        --method cond=runs/cond/model.safetensors --guidance qm9-noh-e3nn-Db [--out benchmarks/results/...json]

For each property separately: N from the Db atom-count histogram, the target c from p(c | N) (the
label of a random Db molecule with N atoms), one molecule per (N, c) from the method conditioned on
that property alone; the Da evaluator of the *other* architecture than the reward (``--evaluator``)
predicts the property and the MAE is taken over all samples, valid or not. Validity and stability of
the same samples are reported. Reference rows (U-bound, #Atoms, L-bound of the evaluator's
architecture) are copied from the record of ``benchmarks.qm9_predictors`` (``--references``).

Steered rows (``--smc K:PROPOSAL``): sequential Monte Carlo with K particles per molecule
(:func:`molctrl.steer.steer`, the ``--smc-reward`` likelihood, τ = 1, validity in the target); best-of-K
rows (``--best-of K``): K fresh prior samples per target, the valid one the same reward likes best.
Both record their denoiser evaluations per molecule.

``--physics`` judges every row's samples of alpha, gap, HOMO, LUMO and μ again by GFN2-xTB
(:func:`molctrl.xtb_reward.physics_check`: hydrogens added, one single point, the recorded quadratic map
onto QM9's DFT scale) and adds ``physics_mae`` (over the molecules xTB could judge; ``physics_judged`` counts
them) beside the evaluator's ``mae``; the reference row ``GFN2-xTB L-bound`` is xTB's own MAE on real
test molecules by the same route (``benchmarks.xtb_calibration``), the floor a perfect generator meets.

Compute per row: a fine-tuned model's training seconds and steps (stored in its ``model.safetensors`` by the
trainer), a guidance row's predictor training seconds (the noise-aware predictor is trained for it;
the clean-data reward predictor is shared by every reward method and not counted), and the sampling
seconds of the row's samples.
"""
from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks.record import (
    command_line,
    emit,
    guided_row,
    machine_info,
    smc_spec_fields,
)
from common.cli import solver_option, window_option
from common.diffusion import ANCESTRAL, SOLVERS, Solver
from common.rewards import GaussianLogLikelihood, WeightedSum, reward_where
from common.weights import read_tree
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.generate import Guidance, generate
from molctrl.io import write_sdf
from molctrl.metrics import evaluate_molecules, train_smiles
from molctrl.noisy_predictor import NoisyPropertyPredictor
from molctrl.physics import PHYSICS_PROPERTIES
from molctrl.pipeline import DEFAULT_WINDOW
from molctrl.predictor import PROPERTIES, likelihood_reward
from molctrl.weights import load_predictor, load_prior, load_reward
from molctrl.xtb_reward import JUDGES, effective_judge, final_judge, physics_check


def protocol_targets(conditions: PropertyConditions, prop: str, n: int,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator]:
    """The protocol's ``n`` draws for one property: N from the Db histogram, c ~ p(c | N), the mask
    ``(n, 6)`` of ``prop`` alone, and the generator that drew them (fresh per property and seed), to sample with."""
    g = torch.Generator().manual_seed(seed * 1000 + PROPERTIES.index(prop))
    n_atoms = conditions.n_atoms[torch.randint(len(conditions.n_atoms), (n,), generator=g)]
    return n_atoms, conditions.sample(n_atoms, g), conditions.mask_from_names([prop], n), g


def _row(name: str, sample, conditions: PropertyConditions, evaluator, properties, n: int, seed: int,
         physics: bool = False, samples: str | None = None) -> dict:
    """MAE per property, and validity / stability over all of the row's samples; with ``physics`` also
    the GFN2-xTB MAE on the DFT scale (over the molecules xTB could judge) of the properties it gives;
    with ``samples`` (a folder) each property's molecules, targets and predictions as one SDF."""
    row, molecules_all, seconds = {"row": name, "mae": {}}, [], 0.0
    for prop in properties:
        n_atoms, y, y_mask, g = protocol_targets(conditions, prop, n, seed)
        t0 = time.perf_counter()
        molecules = sample(y, y_mask, n_atoms, g)
        seconds += time.perf_counter() - t0
        predicted = evaluator.predict_molecules(molecules)[:, evaluator.properties.index(prop)]
        target = y[:, PROPERTIES.index(prop)].numpy()
        row["mae"][prop] = round(float(np.abs(predicted - target).mean()), 5)
        molecules_all += molecules
        print(f"{name} {prop}: MAE {row['mae'][prop]}", file=sys.stderr)
        for m, t, p in zip(molecules, target.tolist(), predicted.tolist()):
            m.properties |= {f"target_{prop}": t, f"predicted_{prop}": round(p, 4)}
        if physics and prop in PHYSICS_PROPERTIES:
            checked = physics_check(molecules, {prop: target}, [prop])[1]
            row.setdefault("physics_mae", {})[prop] = round(checked[f"physics_mae_{prop}"], 5)
            row.setdefault("physics_judged", {})[prop] = checked["physics_judged"]
            print(f"{name} {prop}: physics MAE {row['physics_mae'][prop]} ({checked['physics_judged']} judged)",
                  file=sys.stderr)
        if samples:
            Path(samples).mkdir(parents=True, exist_ok=True)
            write_sdf(Path(samples) / f"{re.sub(r'[^A-Za-z0-9.=-]+', '_', name).strip('_')}_{prop}.sdf", molecules)
    summary = evaluate_molecules(molecules_all, train_smiles(evaluator.config.setting)).summary
    return row | {k: summary[k] for k in ("validity", "atom_stability", "mol_stability", "uniqueness", "novelty")} | {
        "samples_per_property": n, "sampling_seconds": round(seconds, 1)}


def judge_label(judge: str, properties: Sequence[str], judge_reward: str | None = None) -> str:
    """What the final weights (or a best-of ranking) read, for a row's name: the predictor (``model``, or the
    judge predictor's name), ``xtb``, or both, as ``judge`` acts on targets of ``properties`` (``both`` is the
    predictor alone where xTB judges no target)."""
    predictor = judge_reward or "model"
    return {"model": predictor, "xtb": "xtb", "both": f"{predictor} and xtb"}[effective_judge(judge, properties)]


def steered_sampler(spec: str, prior, reward, conditions: PropertyConditions, steps: int, final_reward=None,
                    judge: str = "model", solver: Solver = ANCESTRAL):
    """The row name and sampler of ``--smc K:PROPOSAL[:TAU[:FLAG...]]``, and a box that receives the network
    calls per molecule; flag ``plain`` reads the reward on x̂₀ unwidened in the potential, ``everyM`` reads
    the potential at every M-th step, ``fromT`` switches it on at diffusion step T (default 400), ``best``
    outputs each system's particle of highest final reward (instead of a draw by the final weights);
    ``final_reward`` (named ``judge``, :func:`judge_label`) gives the final weights in the reward's place."""
    from molctrl.steer import Steering, steer
    from molctrl.weights import WEIGHTS_DIR

    k, proposal, tau, flags = smc_spec_fields(spec)
    every = [int(f[5:]) for f in flags if re.fullmatch(r"every[1-9]\d*", f)]
    start = [int(f[4:]) for f in flags if re.fullmatch(r"from[1-9]\d*", f)]
    if len(every) + len(start) + flags.count("plain") + flags.count("best") != len(flags):
        raise click.BadParameter(f"{spec!r}: expected flags 'plain', 'best', 'everyM' (M ≥ 1) or 'fromT' (T ≥ 1) after "
                                 "K:PROPOSAL:TAU", param_hint="--smc")
    potential = "plain" if "plain" in flags else "widened"
    steering = Steering(int(k), proposal, float(tau), start[-1] if start else Steering.potential_from,
                        guidance_window=DEFAULT_WINDOW, widened=potential != "plain",
                        potential_every=every[-1] if every else 1, pick="best" if "best" in flags else "sample")
    conditioned = load_prior(WEIGHTS_DIR / f"qm9-noh-{proposal}.safetensors").eval() if proposal in ("rgdm", "ctrl") else None
    calls = {}

    def sample(y, y_mask, n_atoms, g):
        molecules, report = steer(prior, reward, y, y_mask, n_atoms, steering, conditions, steps, g, conditioned,
                                  final_reward=final_reward, solver=solver)
        calls["network_calls_per_molecule"] = report.network_calls
        calls["mean_ess"] = round(float(report.ess.mean()), 2)
        return molecules

    name = (f"SMC, K = {steering.particles}, {steering.proposal} proposal" + (f", τ = {tau}" if float(tau) != 1 else "")
            + (", plain potential" if potential == "plain" else "")
            + (f", potential every {steering.potential_every} steps" if steering.potential_every > 1 else "")
            + (f", potential from t = {steering.potential_from}" if start else "")
            + (", output: the best particle" if steering.pick == "best" else "")
            + (f", final weights: {judge}" if final_reward else ""))
    return name, sample, calls


def best_of_sampler(k: int, prior, reward, steps: int, solver: Solver = ANCESTRAL):
    """Best-of-K fresh prior samples per target, by ``reward`` among the valid ones (as SMC's target;
    only the valid ones are scored, so that a costly reward such as xTB judges no broken molecule)."""
    from common.selection import best_of_n
    from molctrl.steer import admissible

    valid = admissible(prior)

    def ranked(x, mask, y, y_mask):
        return reward_where(reward, valid(x, mask), x, mask, y, y_mask)

    def sample(y, y_mask, n_atoms, g):
        mask = torch.arange(int(n_atoms.max())).unsqueeze(0) < n_atoms.unsqueeze(1)
        with torch.no_grad():
            x, _ = best_of_n(lambda: prior.diffusion.sample(prior.denoiser, mask, prior.n_channels, steps, generator=g,
                                                                   solver=solver),
                             ranked, mask, k, y, y_mask)
        return prior.decode(x, mask)

    return sample


def likelihood_terms(reward) -> list[tuple[float, GaussianLogLikelihood]]:
    """The ``(weight, likelihood)`` terms of a reward that is a likelihood or a weighted sum of likelihoods,
    so that a pool is scored once (``predict``) and ranked per target (``log_likelihood``)."""
    terms = list(zip(reward.weights, reward.terms)) if isinstance(reward, WeightedSum) else [(1.0, reward)]
    if not all(isinstance(term, GaussianLogLikelihood) for _, term in terms):
        raise TypeError("a shared pool ranks by likelihoods of targets only")
    return terms


def shared_pool_best_of(k: int, prior, reward, conditions: PropertyConditions, properties, n: int, seed: int,
                        steps: int, solver: Solver = ANCESTRAL, batch_size: int = 512) -> tuple:
    """Best-of-K fresh prior samples per target, drawn once for all properties: the j-th target with N atoms
    of every property selects among the j-th block of K pool molecules with N atoms, so each output of a
    property has K prior samples of its own, and K · max_p #{targets with N atoms} molecules are drawn per N
    (about K·n in all, instead of K·n per property). Ranked like :func:`best_of_sampler` (valid ones only).

    Returns the sampler for :func:`_row` and the pool's record (size, seconds, network calls)."""
    from molctrl.steer import admissible

    need: Counter = Counter()
    for prop in properties:
        for size, count in Counter(protocol_targets(conditions, prop, n, seed)[0].tolist()).items():
            need[size] = max(need[size], count)
    g, terms, valid = torch.Generator().manual_seed(seed * 1000 + 999), likelihood_terms(reward), admissible(prior)
    pool, t0 = {}, time.perf_counter()

    @torch.no_grad()
    def scored_batch(b: int, size: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """b fresh prior samples with ``size`` atoms, which are valid, and each term's predictions (NaN: invalid)."""
        mask = torch.ones(b, size, dtype=torch.bool)
        x = prior.diffusion.sample(prior.denoiser, mask, prior.n_channels, steps, generator=g, solver=solver)
        keep = valid(x, mask)
        means = [torch.full((b, term.n_targets), torch.nan) for _, term in terms]
        if keep.any():
            means = [mean.index_put((keep,), term.predict(x[keep], mask[keep])) for mean, (_, term) in zip(means, terms)]
        return x, keep, means

    for size in sorted(need):
        m = need[size] * k
        batches = [scored_batch(min(batch_size, m - start), size) for start in range(0, m, batch_size)]
        x, keep = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        means = [torch.cat(column) for column in zip(*(b[2] for b in batches))]
        pool[size] = x, keep, means
        print(f"pool: {m} molecules with {size} atoms ({int(keep.sum())} valid), {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    record = {"pool_size": sum(need.values()) * k, "pool_seconds": round(time.perf_counter() - t0, 1),
              "network_calls_per_molecule": k * (steps + 1),
              "network_calls_per_molecule_shared": round(sum(need.values()) * k * (steps + 1) / (n * len(properties)), 2)}

    def sample(y, y_mask, n_atoms, g):
        used, molecules = Counter(), []
        for i, size in enumerate(n_atoms.tolist()):
            x, keep, means = pool[size]
            block = slice(used[size] * k, (used[size] + 1) * k)
            used[size] += 1
            r = sum(w * term.log_likelihood(mean[block], y[i:i + 1], y_mask[i:i + 1])
                    for (w, term), mean in zip(terms, means))
            best = x[block][r.masked_fill(~keep[block], -torch.inf).argmax()]
            molecules += prior.decode(best.unsqueeze(0), torch.ones(1, size, dtype=torch.bool))
        return molecules

    return sample, record


def _references(path: str, arch: str, properties) -> list[dict]:
    """#Atoms and the evaluator architecture's U-bound and L-bound rows of a qm9_predictors record."""
    record = json.loads(Path(path).read_text())
    keep = ("#Atoms", f"U-bound ({arch})", f"L-bound ({arch})")
    return [{"row": r["row"], "mae": {p: r["mae"][p] for p in properties}, "source": path}
            for r in record["rows"] if r["row"] in keep]


def _best_of_pool(path: str, reward_model: str, conditions: PropertyConditions, scorer, properties, n: int,
                  seed: int, physics: bool) -> dict:
    """Best-of-N selection from a pool of prior samples: N = the pool molecules of the target's size."""
    from molctrl.molecule import Molecule
    from molctrl.payoff import PriorPool

    pool = PriorPool.load(path)
    predictor = load_predictor(reward_model)
    reward = likelihood_reward(predictor, predictor.properties, 1.0)
    decoder = load_prior(None).setting.atom_decoder

    def best(y, y_mask, n_atoms, g):
        r = reward.log_likelihood(pool.scores.unsqueeze(0), y.unsqueeze(1), y_mask.unsqueeze(1))
        r = r.masked_fill(pool.n_atoms.unsqueeze(0) != n_atoms.unsqueeze(1), float("-inf"))
        rows = r.argmax(1)
        return [Molecule([decoder[t] for t in pool.types[k][pool.types[k] >= 0].tolist()],
                         pool.positions[k][pool.types[k] >= 0].double().numpy()) for k in rows.tolist()]

    counts = torch.bincount(pool.n_atoms)
    return _row("best-of-N (prior pool)", best, conditions, scorer, properties, n, seed, physics) | {
        "pool": path, "pool_size": len(pool.types), "pool_seconds": round(pool.seconds, 1),
        "median_candidates_per_size": int(counts[counts > 0].median()), "train_seconds": 0}


def _physics_floor(properties, path: str = "benchmarks/results/xtb_calibration.json") -> dict:
    """The ``GFN2-xTB L-bound`` row: xTB's MAE after the map on real test molecules, heavy-atom route."""
    judged = json.loads(Path(path).read_text())["routes"]["heavy_atoms"]["properties"]
    return {"row": "GFN2-xTB L-bound", "physics_mae": {p: judged[p]["mae_after_map"] for p in properties if p in judged},
            "source": path}


def predictor_train_seconds(name_or_path: str) -> float | None:
    """Training seconds stored with a predictor's weights (None when not recorded)."""
    from molctrl.weights import predictor_path

    return read_tree(predictor_path(name_or_path)).get("train_seconds")


@click.command()
@click.option("--setting", default="qm9-noh", show_default=True)
@click.option("--method", "methods", multiple=True, metavar="NAME=MODEL",
              help="A conditioned model (from 'molctrl finetune') to score, e.g. ctrl=runs/ctrl/model.safetensors.")
@click.option("--guidance", "guidance_models", multiple=True, metavar="PREDICTOR",
              help="Guidance of the prior by this predictor (shipped name or path): reconstruction guidance for a "
                   "clean-data predictor, classifier guidance for a noise-aware one.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Guidance scale of the --guidance rows.")
@click.option("--guidance-window", "window", default=None, metavar="LO:HI", callback=window_option,
              help="Guide only the steps lo < t ≤ hi of the diffusion's T (e.g. 0:150), for the --guidance rows.")
@click.option("--guidance-scale", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Classifier-free guidance w of every --method model (1: the model itself).")
@click.option("--best-of-pool", "pool_path", default=None, metavar="POOL",
              help="Best-of-N row: for each target the pool molecule (a pool.safetensors of 'molctrl finetune --method rgdm') "
                   "of the target's size that --pool-reward finds most likely.")
@click.option("--pool-reward", default="qm9-noh-e3nn-Db", show_default=True,
              help="The predictor whose predictions the pool holds.")
@click.option("--smc", "smc_specs", multiple=True, metavar="K:PROPOSAL[:TAU[:FLAG...]]",
              help="A sequential Monte Carlo row: K particles, proposal prior, guidance, rgdm or ctrl, temperature τ "
                   "(default 1), then flags: 'plain' for the unwidened potential, 'everyM' to read the potential at every "
                   "M-th step, 'fromT' to switch the potential on at diffusion step T (default 400), e.g. 16:prior, "
                   "16:prior:0.5:plain, 16:prior:0.25:every2, 16:prior:0.002:from200.")
@click.option("--best-of", "best_of", multiple=True, type=click.IntRange(1), metavar="K",
              help="A best-of-K row: K fresh prior samples per target, the valid one --smc-reward likes best.")
@click.option("--best-of-shared", "best_of_shared", multiple=True, type=click.IntRange(1), metavar="K",
              help="A best-of-K row whose fresh prior samples are drawn once for all --property (each output still "
                   "selects among K of its own within a property): about 1/#properties of --best-of's sampling.")
@click.option("--smc-reward", default="qm9-noh-e3nn-Db", show_default=True,
              help="The reward predictor of the --smc and --best-of rows.")
@click.option("--judge-reward", default=None, metavar="PREDICTOR",
              help="A second predictor that reads the finished particles (the --smc rows' final weights, the --best-of "
                   "rows' ranking) in --smc-reward's place, which still steers SMC's path (default: --smc-reward).")
@click.option("--judge", type=click.Choice(JUDGES), default="model", show_default=True,
              help="What the --smc rows' final weights and the --best-of rows' ranking read: the --smc-reward "
                   "predictor, the calibrated GFN2-xTB likelihood, or both (the predictor still steers SMC's path).")
@click.option("--unconditional", is_flag=True, help="Also score the prior itself, blind to the targets.")
@click.option("--prior", "prior_path", default=None, help="Prior for guidance rows (default: shipped).")
@click.option("--evaluator", default="qm9-noh-egnn-Da", show_default=True)
@click.option("--references", type=click.Path(dir_okay=False), default="benchmarks/results/qm9_predictors_qm9-noh.json",
              show_default=True, help="Record of benchmarks.qm9_predictors whose reference rows to include.")
@click.option("--property", "properties", multiple=True, type=click.Choice(PROPERTIES), default=PROPERTIES)
@click.option("-n", "n_samples", type=int, default=500, show_default=True, help="Samples per property and row.")
@click.option("--steps", type=int, default=100, show_default=True, help="Sampling steps.")
@solver_option("ancestral")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--physics", is_flag=True, help="Also judge every row's samples by GFN2-xTB on the DFT scale (alpha, gap, "
              "homo, lumo, mu): physics_mae beside the evaluator's mae.")
@click.option("--samples", "samples_dir", type=click.Path(file_okay=False), default=None,
              help="Write each row's molecules per property as SAMPLES/ROW_PROPERTY.sdf (targets, predictions, xtb_* fields).")
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(setting, methods, guidance_models, scale, window, guidance_scale, pool_path, pool_reward, smc_specs, best_of,
         best_of_shared, smc_reward, judge_reward, judge, unconditional, prior_path, evaluator, references, properties, n_samples, steps, solver, seed, physics,
         samples_dir, threads, out) -> None:
    """Score conditioned generators by the EDM protocol and print one JSON record."""
    row = partial(_row, physics=physics, samples=samples_dir)
    solver_name, solver = solver, SOLVERS[solver]
    if threads:
        torch.set_num_threads(threads)
    conditions = PropertyConditions.from_split(load_split(setting, "Db"))
    scorer = load_predictor(evaluator).eval()
    rows = _references(references, scorer.config.arch, properties) if references else []
    if physics:
        rows.append(_physics_floor(properties))
    for spec in methods:
        name, _, path = spec.partition("=")
        model = load_prior(path).eval()
        trained = read_tree(path)

        def sample(y, y_mask, n_atoms, g, model=model):
            return generate(model, conditions, y, y_mask, steps, g, n_atoms=n_atoms, guidance_scale=guidance_scale,
                            solver=solver)

        rows.append(row(guided_row(name, guidance_scale), sample, conditions, scorer, properties, n_samples, seed)
                    | {"model": path, "guidance_scale": guidance_scale, "train_steps": trained.get("step"), "train_seconds": trained.get("train_seconds")})
    if unconditional:
        prior = load_prior(prior_path).eval()

        def blind(y, y_mask, n_atoms, g, prior=prior):
            return generate(prior, conditions, y, y_mask, steps, g, n_atoms=n_atoms, solver=solver)

        rows.append(row("prior (no control)", blind, conditions, scorer, properties, n_samples, seed))
    for predictor_name in guidance_models:
        prior = load_prior(prior_path).eval()
        predictor = load_predictor(predictor_name).eval()
        if isinstance(predictor, NoisyPropertyPredictor):
            guidance = Guidance(scale, noisy=predictor, window=window)
        else:
            guidance = Guidance(scale, reward=likelihood_reward(predictor, predictor.properties,
                                                                prior.config.type_scale), window=window)

        def guided(y, y_mask, n_atoms, g, prior=prior, guidance=guidance):
            return generate(prior, conditions, y, y_mask, steps, g, guidance, n_atoms=n_atoms, solver=solver)

        where = "" if window is None else f", steps {window[0]} < t ≤ {window[1]}"
        rows.append(row(f"{guidance.mode} guidance ({predictor.config.arch}{where})", guided, conditions, scorer, properties,
                         n_samples, seed)
                    | {"reward_model": predictor_name, "scale": scale, "window": window,
                       "train_seconds": predictor_train_seconds(predictor_name) if guidance.mode == "classifier" else 0})
    if pool_path:
        rows.append(_best_of_pool(pool_path, pool_reward, conditions, scorer, properties, n_samples, seed, physics))
    if smc_specs or best_of or best_of_shared:
        prior = load_prior(prior_path).eval()
        predictor = load_predictor(smc_reward).eval()
        reward = likelihood_reward(predictor, predictor.properties, prior.config.type_scale)
        if judge == "xtb" and not set(properties) <= set(PHYSICS_PROPERTIES):
            raise click.BadParameter(f"GFN2-xTB judges {', '.join(PHYSICS_PROPERTIES)} only: pass --property for "
                                     "those", param_hint="--judge")
        judged = None if judge_reward is None else load_reward(prior, judge_reward)
        final = final_judge(judge, reward, prior.decode, properties, judged)
        label = judge_label(judge, properties, judge_reward)
        models = {"reward_model": smc_reward, "judge": effective_judge(judge, properties)} | (
            {"judge_model": judge_reward} if judge_reward else {})
        for spec in smc_specs:
            name, sample, calls = steered_sampler(spec, prior, reward, conditions, steps, final, label, solver)
            rows.append(row(name, sample, conditions, scorer, properties, n_samples, seed) | calls | models)
        for k in best_of:
            rows.append(row(f"best of {k} prior samples" + (f", by {label}" if final else ""),
                            best_of_sampler(k, prior, final or reward, steps, solver), conditions, scorer, properties, n_samples, seed)
                        | models | {"network_calls_per_molecule": k * (steps + 1)})
        for k in best_of_shared:
            sample, pool = shared_pool_best_of(k, prior, final or reward, conditions, properties, n_samples, seed, steps,
                                               solver)
            rows.append(row(f"best of {k} prior samples (shared pool)" + (f", by {label}" if final else ""), sample,
                            conditions, scorer, properties, n_samples, seed) | pool | models)
    record = {"setting": setting, "evaluator": evaluator, "seed": seed, "sampling_steps": steps, "solver": solver_name, "rows": rows,
              "threads": torch.get_num_threads(),
              "command": command_line("benchmarks.qm9_conditional"), "machine": machine_info()}
    emit(record, out, indent=1)


if __name__ == "__main__":
    main()
