"""Shipped weights (trained with the project's own CLI; each has a ``.md`` record beside it).

Property predictors are named ``<setting>-<arch>-<split>.safetensors``: the ``Da`` ones are the evaluators
that score generated molecules, the ``Db`` ones give rewards (the same split as the generators).
"""
from __future__ import annotations

from pathlib import Path

from common.exports import load_module
from common.rewards import Reward
from common.weights import SUFFIX
from molctrl.predictor import PROPERTIES, PropertyPredictor, likelihood_reward
from molctrl.prior import MoleculeDiffusion

WEIGHTS_DIR = Path(__file__).parent
DEFAULT_PRIOR = WEIGHTS_DIR / f"qm9-noh-prior{SUFFIX}"
PREDICTOR_NAMES = (*(f"qm9-noh-{arch}-{split}" for split in ("Da", "Db") for arch in ("egnn", "e3nn")),
                   "qm9-noh-e3nn-Db-dipole",  # the e3nn reward with a dipole head for μ, trained twice as long
                   "qm9-noh-e3nn-Db-dipole-96",  # the same, 96 scalar channels: the judge of SMC's finished particles
                   "qm9-noh-egnn-Da-dipole")  # the evaluator with a dipole head (an option: the tables use egnn-Da)
DEFAULT_EVALUATOR = "qm9-noh-egnn-Da"


def load_prior(path: str | Path | None = None) -> MoleculeDiffusion:
    """A :class:`MoleculeDiffusion` (a prior or a conditioned model) from a weights file (default: the
    shipped ``qm9-noh`` prior)."""
    return MoleculeDiffusion.load(DEFAULT_PRIOR if path is None else path)


def predictor_path(name_or_path: str | Path) -> Path:
    """A shipped predictor's file (by name, see :data:`PREDICTOR_NAMES`) or the path itself."""
    if str(name_or_path) in PREDICTOR_NAMES:
        return WEIGHTS_DIR / f"{name_or_path}{SUFFIX}"
    return Path(name_or_path)


def load_predictor(name_or_path: str | Path = DEFAULT_EVALUATOR) -> PropertyPredictor:
    """A :class:`PropertyPredictor` (or a :class:`NoisyPropertyPredictor`, by the file's kind) from a
    shipped name or a weights file of ``molctrl train predictor``."""
    from molctrl.noisy_predictor import NoisyPropertyPredictor

    return load_module(predictor_path(name_or_path), [PropertyPredictor, NoisyPropertyPredictor])[0]


def load_reward(prior: MoleculeDiffusion, reward_model: str, maximize: str | None = None,
                properties: tuple[str, ...] = PROPERTIES) -> Reward:
    """The reward of fine-tuning or of steering, frozen: an RDKit score to ``maximize``, the likelihood of
    the reward model (a shipped name or a file), or (``reward_model="xtb"``) the calibrated GFN2-xTB
    likelihood of ``properties``."""
    from molctrl.chemistry import ChemistryReward

    if maximize:
        reward = ChemistryReward(maximize, prior.decode)
    elif reward_model == "xtb":
        from molctrl.xtb_reward import XTBLikelihood

        reward = XTBLikelihood(prior.decode, properties)
    else:
        predictor = load_predictor(reward_model)
        reward = likelihood_reward(predictor, predictor.properties, prior.config.type_scale)
    return reward.requires_grad_(False).eval()
