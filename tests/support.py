"""What several test folders build: tiny molecule models (a prior, a reward predictor, conditions on 300
Db molecules), their weights files, and a conditioned model fine-tuned for one step by the CLI. The
fixtures in ``tests/conftest.py`` and ``benchmarks/tests/conftest.py`` wrap these."""
from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner

from common.weights import save_tree
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import QM9Split, load_split
from molctrl.predictor import (
    PROPERTIES,
    PredictorConfig,
    PropertyPredictor,
    likelihood_reward,
)
from molctrl.prior import MoleculeDiffusion, PriorConfig


def tiny_molecule_parts() -> tuple[QM9Split, MoleculeDiffusion, object, PropertyConditions]:
    """The first 300 Db molecules, an untrained small prior (T = 50), a reward on an untrained small
    predictor (calibration s = a third of each label's spread), and the conditions of those molecules."""
    torch.manual_seed(0)
    split = load_split("qm9-noh", "Db").subset(slice(300))
    prior = MoleculeDiffusion(PriorConfig(hidden=16, n_layers=2, n_steps=50), split.n_atoms_histogram())
    labels = split.labels(PROPERTIES)
    predictor = PropertyPredictor(PredictorConfig(hidden=16, n_layers=1), labels.mean(0), labels.std(0))
    predictor.calibration = torch.tensor(labels.std(0) / 3, dtype=torch.float32)
    reward = likelihood_reward(predictor, PROPERTIES, prior.config.type_scale)
    return split, prior, reward, PropertyConditions.from_split(split)


def write_weight_files(parts, root: Path) -> Path:
    """``root/prior.safetensors`` and ``root/predictor.safetensors`` of :func:`tiny_molecule_parts`."""
    _, prior, reward, _ = parts
    save_tree(prior.export(), root / "prior.safetensors")
    save_tree(reward.regressor.predictor.export(), root / "predictor.safetensors")
    return root


def finetune_tiny(weight_files: Path, run: Path) -> Path:
    """One CTRL step of ``molctrl finetune`` on the tiny files; returns ``run/model.safetensors``."""
    from molctrl.cli import main

    result = CliRunner().invoke(main, ["finetune", "--run-dir", str(run), "--prior", str(weight_files / "prior.safetensors"),
                                       "--reward-model", str(weight_files / "predictor.safetensors"), "--property", "all",
                                       "--batch-size", "4", "--sampling-steps", "3", "--steps", "1"])
    assert result.exit_code == 0, result.output
    return run / "model.safetensors"
