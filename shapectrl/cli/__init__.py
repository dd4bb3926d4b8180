"""The ``shapectrl`` command line."""
from __future__ import annotations

import click

from common.cli import Commands, weights_group
from shapectrl.classifier import ShapeClassifier
from shapectrl.cli.data import data
from shapectrl.cli.evaluate import evaluate
from shapectrl.cli.generate import generate
from shapectrl.cli.sample import sample
from shapectrl.cli.train import train
from shapectrl.control import ShapePool
from shapectrl.prior import ShapeDiffusion


@click.group(cls=Commands, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Reward-guided control of 3D point-cloud diffusion models: shape data, priors, classifiers and metrics."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


for command in (data, train, sample, generate, evaluate, weights_group("shapectrl", [ShapeDiffusion, ShapeClassifier, ShapePool])):
    main.add_command(command)
