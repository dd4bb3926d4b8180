"""The ``shapectrl`` command line (shapes arrive with their own issue)."""
from __future__ import annotations

import click


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Reward-guided control of 3D point-cloud diffusion models: not yet available."""
    if ctx.invoked_subcommand is None:
        click.echo("shapectrl: not yet — shapes are planned (see the project's issues); use molctrl for molecules.")
