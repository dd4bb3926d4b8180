"""The ``molctrl`` command line."""
from __future__ import annotations

import click

from molctrl.cli.data import data
from molctrl.cli.evaluate import evaluate
from molctrl.cli.finetune import finetune
from molctrl.cli.generate import generate
from molctrl.cli.predict import predict
from molctrl.cli.sample import sample
from molctrl.cli.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reward-guided control of 3D molecule diffusion models (QM9)."""


for command in (data, evaluate, finetune, generate, predict, sample, train):
    main.add_command(command)
