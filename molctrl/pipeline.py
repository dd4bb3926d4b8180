"""The Python API for molecules: load once, generate for property targets (or a maximised score), score.

    import molctrl

    generator = molctrl.load()                                  # SMC over the shipped prior (docs/steered.md)
    result = generator.sample({"alpha": 70}, n=16, seed=0)      # each molecule from its own 16 particles
    report = molctrl.evaluate(result.molecules, {"alpha": 70})  # validity, uniqueness, novelty, stability, MAE
    molctrl.write_molecules("alpha70.sdf", result.molecules)

``molctrl generate`` is this module behind a command line: :class:`GenerationConfig` holds the defaults
both use. Methods: ``smc`` (K particles steered by the reward towards p_pre·exp(r/τ), the default),
``rgdm`` / ``ctrl`` (a conditioned model sampled once), ``guidance`` (the prior steered by the reward
predictor's gradient, reconstruction guidance; classifier guidance with a noise-aware predictor).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common.diffusion import SOLVERS, solver_named
from common.rewards import Reward
from common.runtime import (
    check_precision_choice,
    resolve_device,
    resolve_precision,
    seed_everything,
    set_precision,
)
from common.smc import SteeringReport, check_pick
from common.weights import SUFFIX, WeightsError
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.generate import (
    Guidance,
    atom_counts,
    check_targets,
    generate,
    target_tensors,
)
from molctrl.molecule import Molecule
from molctrl.predictor import PROPERTIES, PropertyPredictor
from molctrl.prior import MoleculeDiffusion
from molctrl.steer import PROPOSALS, Steering, steer
from molctrl.weights import (
    DEFAULT_EVALUATOR,
    WEIGHTS_DIR,
    load_predictor,
    load_prior,
    load_reward,
)

METHODS = ("smc", "rgdm", "ctrl", "guidance")
SCORES = ("qed", "logp", "sa")  # RDKit scores that can be maximised
DEFAULT_REWARD_MODEL = "qm9-noh-e3nn-Db"
DEFAULT_WINDOW = (0, 150)  # reconstruction guidance: benchmarks/results/qm9_conditional_reconstruction_window_*
# SMC's τ and the diffusion step where its potential switches on, for property targets (docs/steered.md: the
# lowest MAE) and for a maximised score (docs/conditioned.md: QED above best-of-16 at equal evaluations)
TARGET_TEMPERATURE, MAXIMIZE_TEMPERATURE = 0.25, 0.002
TARGET_POTENTIAL_FROM, MAXIMIZE_POTENTIAL_FROM = 400, 100
# which particle of each system is the output: for targets the best (docs/steered.md: a lower MAE on all six
# properties than a draw by the weights at the same cost); for a maximised score the draw (on QED the best
# particle gave the same mean, 2 points more unique and 5 points less novel molecules: docs/steered.md)
TARGET_PICK, MAXIMIZE_PICK = "best", "sample"
# the predictor whose likelihood weighs SMC's finished particles for targets that GFN2-xTB does not judge
# (α, Cv): at the same cost, lower evaluator errors than the steering reward's (docs/steered.md, "A wider
# judge"); where xTB judges too, it outweighed xTB, and the steering reward judges there
WIDE_JUDGE_MODEL = "qm9-noh-e3nn-Db-dipole-96"


@dataclass
class GenerationConfig:
    """How molecules are generated (the defaults of ``molctrl generate``).

    ``particles``, ``proposal``, ``temperature`` (τ; None: 0.25 for targets, 0.002 to maximise),
    ``potential_from`` (the diffusion step of 1,000 below which the reward steers; None: 400 for
    targets, 100 to maximise), ``pick`` (each molecule: ``sample``, drawn by its system's final weights,
    or ``best``, its system's particle of highest final reward; :data:`common.smc.PICKS`; None: best for
    targets, sample to maximise) and
    ``judge`` (what the final weights read: ``model``, ``xtb`` or ``both``; None: ``both`` for Δε,
    HOMO, LUMO and μ targets where tblite is installed) and ``judge_model`` (the predictor those weights
    read, a shipped name or a file; None: :data:`WIDE_JUDGE_MODEL` when no target is one xTB judges, else
    ``reward_model``, which always steers the path; :func:`judge_model_for`) steer ``smc``; ``scale`` and ``window`` (the
    diffusion steps lo < t ≤ hi guided; None: 0:150 for reconstruction guidance) shape ``guidance``
    and the guidance proposal; ``guidance_scale`` is classifier-free guidance w of ``rgdm`` / ``ctrl``;
    ``steps`` reverse steps of ``solver`` (:data:`common.diffusion.SOLVERS`); ``precision`` that of the
    denoisers' matrix products (:data:`common.runtime.PRECISIONS`, or ``auto``:
    :func:`common.runtime.resolve_precision`; the reward stays float32).
    """

    method: str = "smc"
    particles: int = 16
    proposal: str = "prior"
    temperature: float | None = None
    potential_from: int | None = None
    judge: str | None = None
    scale: float = 1.0
    window: tuple[int, int] | None = None
    guidance_scale: float = 1.0
    steps: int = 50
    solver: str = "dpm2"  # docs/sampling.md: SMC's errors at half the network evaluations of 100 ancestral steps
    reward_model: str = DEFAULT_REWARD_MODEL
    precision: str = "auto"  # bf16 where the hardware has it (docs/sampling.md: validity unchanged, 1.3-1.6x faster)
    pick: str | None = None
    judge_model: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (expected one of {', '.join(METHODS)})")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r} (expected one of {', '.join(PROPOSALS)})")
        solver_named(self.solver)
        check_precision_choice(self.precision)
        if self.method == "smc" and self.particles < 1:
            raise ValueError("smc needs at least one particle per molecule")
        if self.pick is not None:
            check_pick(self.pick)
        if self.potential_from is not None and self.potential_from < 1:
            raise ValueError(f"potential_from is a diffusion step ≥ 1, got {self.potential_from}")
        if self.guidance_scale != 1.0 and self.method not in ("rgdm", "ctrl"):
            raise ValueError("classifier-free guidance needs property targets and a conditioned model "
                             "(method rgdm or ctrl, sampled once)")
        guided = (self.proposal if self.method == "smc" else self.method) == "guidance"
        if self.window is not None and not guided:
            raise ValueError("only method guidance (or the guidance proposal) has a guidance window")
        for name in ("judge", "judge_model"):
            if getattr(self, name) is not None and self.method != "smc":
                raise ValueError(f"{name} {getattr(self, name)!r} weighs the particles of smc: use it with method smc")
        if self.judge == "xtb" and self.judge_model is not None:
            raise ValueError("judge 'xtb' reads GFN2-xTB alone: judge_model needs judge 'model' or 'both'")


@dataclass
class Generated:
    """What :meth:`MoleculeGenerator.sample` returns: the molecules (SMC adds each one's ``reward`` and
    ``log_weight`` to its properties), the targets, how they were made, the sampling time, and for SMC
    its report (mean ESS, network evaluations), its settings (τ, where the potential starts, ...) and
    what the final weights read."""

    molecules: list[Molecule]
    targets: dict[str, float]
    description: str
    seconds: float
    steering: SteeringReport | None = None
    settings: Steering | None = None
    final_weights: str | None = None
    judge_model: str | None = None


def judge_model_for(config: GenerationConfig, targets: Sequence[str]) -> str | None:
    """The predictor that weighs SMC's finished particles for ``targets``, when it is not the steering
    reward itself (None): ``config.judge_model``, or by default :data:`WIDE_JUDGE_MODEL` for targets of
    which none is judged by GFN2-xTB (:data:`molctrl.xtb_reward.BOTH_JUDGED`)."""
    from molctrl.xtb_reward import BOTH_JUDGED

    name = config.judge_model
    if name is None and targets and not set(targets) & set(BOTH_JUDGED):
        name = WIDE_JUDGE_MODEL
    return None if name == config.reward_model else name


class MoleculeGenerator:
    """A generator ready to sample: the model (the prior, or a conditioned model), the conditioning
    labels (targets' range, p(N | c)), the reward of SMC or guidance, and the config. Build it with
    :meth:`load`."""

    def __init__(self, model: MoleculeDiffusion, conditions: PropertyConditions, config: GenerationConfig,
                 reward: Reward | None = None, conditioned: MoleculeDiffusion | None = None,
                 guidance: Guidance | None = None, maximize: str | None = None):
        self.model, self.conditions, self.config = model.eval(), conditions, config
        self.reward, self.conditioned, self.guidance, self.maximize = reward, conditioned, guidance, maximize
        self._judges: dict[str, Reward] = {}

    @classmethod
    def load(cls, config: GenerationConfig | None = None, *, maximize: str | None = None, model: str | None = None,
             prior: str | None = None, device: str = "auto") -> MoleculeGenerator:
        """The shipped models (or the files given) for ``config``: ``model`` is the conditioned model of
        ``rgdm`` / ``ctrl`` (as a method or an SMC proposal; default: the shipped one) or the prior of
        ``guidance``; ``prior`` the prior SMC steers; ``maximize`` an RDKit score (qed, logp, sa) instead
        of property targets. Raises ValueError (or :class:`~common.weights.WeightsError` for an unusable
        file) in one line."""
        config = config or GenerationConfig()
        if maximize is not None and maximize not in SCORES:
            raise ValueError(f"unknown score {maximize!r} to maximise (expected one of {', '.join(SCORES)})")
        guided = (config.proposal if config.method == "smc" else config.method) == "guidance"
        if maximize and guided:
            raise ValueError("guidance needs a differentiable reward: use it with property targets")
        if maximize and config.guidance_scale != 1.0:
            raise ValueError("classifier-free guidance needs property targets and a conditioned model")
        dev = resolve_device(device)
        config = replace(config, precision=resolve_precision(config.precision, dev))
        reward = conditioned = guidance = None
        if maximize and config.judge_model:
            raise ValueError("judge_model weighs property targets: maximising reads the score itself")
        if config.method == "smc":
            main = load_prior(prior).to(dev)
            if config.proposal in ("rgdm", "ctrl"):
                conditioned = _conditioned(model, config.proposal, maximize).to(dev)
            elif model:
                raise ValueError(f"model: the conditioned model of an rgdm or ctrl proposal, not of "
                                 f"{config.proposal!r}")
            reward = load_reward(main, config.reward_model, maximize).to(dev)
        elif config.method == "guidance":
            main = load_prior(model).to(dev)
            guidance = _guidance(main, config, dev)
        else:
            main = _conditioned(model, config.method, maximize).to(dev)
        if config.window is not None and config.window[1] > main.diffusion.n_steps:
            raise ValueError(f"guidance window {config.window[0]}:{config.window[1]} reaches beyond the model's "
                             f"{main.diffusion.n_steps} diffusion steps")
        for denoising in (main, conditioned):
            if denoising is not None:
                set_precision(denoising, config.precision)
        conditions = PropertyConditions.from_split(load_split(main.config.setting, "Db"))
        generator = cls(main, conditions, config, reward, conditioned, guidance, maximize)
        if config.judge_model:
            generator._judge(config.judge_model)  # an unusable file fails here, not after sampling
        return generator

    def sample(self, targets: dict[str, float] | None = None, n: int = 16, seed: int = 0,
               on_batch: Callable[[int], None] | None = None) -> Generated:
        """``n`` molecules for ``targets`` (property -> value, any subset of :data:`PROPERTIES`; none when
        maximising). ``on_batch(k)`` after each batch of k molecules. Raises ValueError for a target
        outside the labels the models saw, or a request the generator was not loaded for."""
        targets = dict(targets or {})
        unknown = [p for p in targets if p not in PROPERTIES]
        if unknown:
            raise ValueError(f"unknown properties {unknown} (expected some of {', '.join(PROPERTIES)})")
        if bool(targets) == bool(self.maximize):
            raise ValueError("give property targets, or load the generator with maximize= (not both)")
        check_targets(targets, self.conditions)
        config, model = self.config, self.model
        y, y_mask = target_tensors(targets, n)
        generator = seed_everything(seed)
        t0 = time.perf_counter()
        if config.method != "smc":
            molecules = generate(model, self.conditions, y, y_mask, config.steps, generator, self.guidance,
                                 guidance_scale=config.guidance_scale, solver=SOLVERS[config.solver])
            return self._finish(molecules, targets, f"method {config.method}", seed, t0)
        judge, judge_model, final_reward = self._final_reward(targets)
        default_from = MAXIMIZE_POTENTIAL_FROM if self.maximize else TARGET_POTENTIAL_FROM
        steering = Steering(config.particles, config.proposal,
                            config.temperature or (MAXIMIZE_TEMPERATURE if self.maximize else TARGET_TEMPERATURE),
                            default_from if config.potential_from is None else config.potential_from,
                            guidance_scale=config.scale, guidance_window=config.window or DEFAULT_WINDOW,
                            pick=config.pick or (MAXIMIZE_PICK if self.maximize else TARGET_PICK))
        molecules, report = steer(model, self.reward, y, y_mask, atom_counts(self.conditions, y, y_mask, generator=generator),
                                  steering, self.conditions, config.steps, generator, self.conditioned,
                                  on_batch=on_batch, final_reward=final_reward, solver=SOLVERS[config.solver])
        for m, r, w in zip(molecules, report.reward.tolist(), report.log_weight.tolist()):
            m.properties |= {"reward": round(r, 4), "log_weight": round(w, 4)}
        how = (f"smc {config.particles} particles, {config.proposal} proposal, temperature {steering.temperature:g}, "
               f"potential from t = {steering.potential_from}, pick {steering.pick}")
        if final_reward is not None:
            predictor = f"the predictor {judge_model}" if judge_model else "the predictor"
            how += ", final weights by " + {"xtb": "GFN2-xTB", "model": predictor,
                                              "both": f"{predictor} and GFN2-xTB"}[judge]
        return self._finish(molecules, targets, how, seed, t0, report, steering, judge, judge_model)

    def _judge(self, name: str) -> Reward:
        """The predictor ``name`` as a likelihood reward on the model's molecules (loaded once)."""
        if name not in self._judges:
            self._judges[name] = load_reward(self.model, name).to(next(self.model.parameters()).device)
        return self._judges[name]

    def _final_reward(self, targets: dict[str, float]) -> tuple[str, str | None, Reward | None]:
        """The judge of the final weights (the config's, or ``both`` for targets where tblite is installed),
        the predictor it reads when that is not the steering reward (:func:`judge_model_for`), and its
        reward (None: the steering reward itself)."""
        from molctrl.physics import tblite_missing
        from molctrl.xtb_reward import effective_judge, final_judge

        missing = tblite_missing()
        judge = self.config.judge or ("both" if targets and not missing else "model")
        if judge != "model" and not targets:
            raise ValueError(f"judge {judge!r} weighs property targets: maximising reads the score itself")
        if judge != "model" and missing:
            raise ValueError(f"judge {judge!r}: {missing}")
        name = judge_model_for(self.config, list(targets)) if judge != "xtb" else None
        final = final_judge(judge, self.reward, self.model.decode, list(targets),
                            None if name is None else self._judge(name))
        return effective_judge(judge, targets), name, final

    @staticmethod
    def _finish(molecules: list[Molecule], targets: dict[str, float], how: str, seed: int, t0: float,
                report: SteeringReport | None = None, settings: Steering | None = None,
                weights: str | None = None, judge_model: str | None = None) -> Generated:
        for k, m in enumerate(molecules):
            m.title = f"molctrl generate {k} seed {seed} {how}"
        return Generated(molecules, targets, how, time.perf_counter() - t0, report, settings, weights, judge_model)


def _conditioned(path: str | None, method: str, maximize: str | None) -> MoleculeDiffusion:
    """A conditioned model: ``path``, or the shipped one of ``method`` (and of the maximised score)."""
    path = Path(path) if path else WEIGHTS_DIR / f"qm9-noh-{method}{'-' + maximize if maximize else ''}{SUFFIX}"
    if not path.exists():
        raise ValueError(f"{path}: no such model; train one with 'molctrl finetune' and pass it as the model, "
                         "or use guidance")
    model = load_prior(path)
    if not model.config.cond_dim:
        raise WeightsError(f"{path}: not a conditioned model (train one with 'molctrl finetune')")
    return model


def _guidance(prior: MoleculeDiffusion, config: GenerationConfig, device: torch.device) -> Guidance:
    """Reconstruction guidance by a clean-data predictor, classifier guidance by a noise-aware one."""
    from molctrl.noisy_predictor import NoisyPropertyPredictor
    from molctrl.predictor import likelihood_reward

    predictor = load_predictor(config.reward_model).eval().to(device)
    if isinstance(predictor, NoisyPropertyPredictor):
        return Guidance(config.scale, noisy=predictor, window=config.window)
    return Guidance(config.scale, reward=likelihood_reward(predictor, predictor.properties, prior.config.type_scale),
                    window=config.window or DEFAULT_WINDOW)


def load(method: str = "smc", *, maximize: str | None = None, model: str | None = None, prior: str | None = None,
         device: str = "auto", **options) -> MoleculeGenerator:
    """``molctrl.load(...)``: a :class:`MoleculeGenerator` for ``method`` with any :class:`GenerationConfig`
    field as a keyword (``particles=64``, ``temperature=0.5``, ``judge="model"``, ...)."""
    return MoleculeGenerator.load(GenerationConfig(method=method, **options), maximize=maximize, model=model,
                                  prior=prior, device=device)


def evaluate(molecules: Sequence[Molecule], targets: dict[str, float] | None = None,
             evaluator: str | PropertyPredictor = DEFAULT_EVALUATOR, maximize: str | None = None,
             physics: bool = False, setting: str = "qm9-noh") -> dict:
    """EDM's metrics of ``molecules`` (validity, uniqueness, novelty against the ``setting``'s training
    SMILES, atom and molecule stability) and, for ``targets``, the ``evaluator``'s MAE and mean per
    property (``mae_<p>``, ``mean_predicted_<p>``); for ``maximize``, the mean score (``mean_<score>``);
    with ``physics``, GFN2-xTB's values on the DFT scale and their MAE to the targets
    (:func:`molctrl.xtb_reward.physics_check`). Each molecule's properties gain ``target_<p>`` and
    ``predicted_<p>`` (or the score), so that a written SDF carries them."""
    from molctrl.metrics import evaluate_molecules, train_smiles

    targets = dict(targets or {})
    summary = evaluate_molecules(molecules, train_smiles(setting)).summary
    if targets:
        predictor = load_predictor(evaluator).eval() if isinstance(evaluator, (str, Path)) else evaluator
        predictions = predict(predictor, molecules, list(targets))
        for name, column in zip(targets, predictions.T):
            summary[f"mae_{name}"] = float(np.nanmean(np.abs(column - targets[name])))
            summary[f"mean_predicted_{name}"] = float(np.nanmean(column))
            for m, value in zip(molecules, column):
                m.properties[f"target_{name}"] = targets[name]
                m.properties[f"predicted_{name}"] = round(float(value), 4)
    if maximize:
        from molctrl.chemistry import chemistry_scores

        scores = chemistry_scores(molecules, [maximize])[maximize]
        summary[f"mean_{maximize}"] = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
        for m, value in zip(molecules, scores):
            m.properties[maximize] = "invalid" if np.isnan(value) else round(float(value), 4)
    if physics:
        from molctrl.physics import PHYSICS_PROPERTIES, require_tblite
        from molctrl.xtb_reward import physics_check

        require_tblite()
        judged = [p for p in targets if p in PHYSICS_PROPERTIES] or list(PHYSICS_PROPERTIES)
        summary |= physics_check(molecules, {p: np.float64(targets[p]) for p in judged if p in targets}, judged)[1]
    return summary


def predict(predictor: PropertyPredictor, molecules: Sequence[Molecule], names: Sequence[str]) -> np.ndarray:
    """Predictions ``(M, len(names))``, NaN for molecules without atoms."""
    columns = [predictor.properties.index(p) for p in names]
    out = np.full((len(molecules), len(names)), np.nan)
    ok = [k for k, m in enumerate(molecules) if m.n_atoms]
    if ok:
        with torch.no_grad():
            out[ok] = predictor.predict_molecules([molecules[k] for k in ok])[:, columns]
    return out
