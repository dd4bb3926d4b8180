"""The ``molctrl`` command line."""
from __future__ import annotations

import click

from common.cli import Commands, weights_group
from molctrl.cli.data import data
from molctrl.cli.evaluate import evaluate
from molctrl.cli.finetune import finetune
from molctrl.cli.generate import generate
from molctrl.cli.predict import predict
from molctrl.cli.sample import sample
from molctrl.cli.train import train
from molctrl.noisy_predictor import NoisyPropertyPredictor
from molctrl.payoff import PriorPool
from molctrl.predictor import PropertyPredictor
from molctrl.prior import MoleculeDiffusion


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reward-guided control of 3D molecule diffusion models (QM9)."""


weights = weights_group("molctrl", [MoleculeDiffusion, PropertyPredictor, NoisyPropertyPredictor, PriorPool])
for command in (data, evaluate, finetune, generate, predict, sample, train, weights):
    main.add_command(command)
