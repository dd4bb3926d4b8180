"""``molctrl evaluate``: EDM's metrics for the molecules in an XYZ or SDF file."""
from __future__ import annotations

import json
from pathlib import Path

import click

from molctrl.io import MoleculeFileError, read_molecules
from molctrl.metrics import (
    EXACT_VALENCE,
    evaluate_molecules,
    reference_setting,
    train_smiles,
)
from molctrl.molecule import Molecule


class InputFileError(click.ClickException):
    """A molecule file that cannot be read: one ``Error: ...`` line on stderr, exit code 2."""

    exit_code = 2


def _reference(molecules: list[Molecule], no_novelty: bool) -> tuple[str | None, set[str] | None]:
    """The QM9 setting whose training SMILES define novelty, and those SMILES."""
    if no_novelty:
        return None, None
    setting = reference_setting(molecules)
    try:
        return setting, train_smiles(setting)
    except FileNotFoundError as err:
        raise click.ClickException(f"novelty needs the QM9 training molecules: {err} (or pass --no-novelty)") from None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:6.2f} %"


def _summary_text(path: Path, summary: dict, reference: str | None) -> str:
    stability = (
        "bond orders sum to an allowed valence"
        if summary["stability_definition"] == EXACT_VALENCE
        else "no hydrogens: no atom exceeds its largest valence"
    )
    novelty = f"vs {reference} train" if reference else "not computed"
    return "\n".join([
        f"{path}: {summary['n']} molecules",
        f"  atom stability      {_percent(summary['atom_stability'])}   ({stability})",
        f"  molecule stability  {_percent(summary['mol_stability'])}",
        f"  validity            {_percent(summary['validity'])}",
        f"  uniqueness          {_percent(summary['uniqueness'])}",
        f"  novelty             {_percent(summary['novelty'])}   ({novelty})",
    ])


@click.command("evaluate")
@click.argument("path", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@click.option("--details", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write one CSV row per molecule to this file.")
@click.option("--no-novelty", is_flag=True, help="Skip novelty (needs no QM9 training data).")
def evaluate(path: Path, as_json: bool, details: Path | None, no_novelty: bool) -> None:
    """Stability, validity, uniqueness and novelty (EDM's definitions) of the molecules in PATH.

    PATH is an .xyz, .sdf or .mol file. Novelty is measured against the QM9 training molecules,
    with hydrogens if any molecule has one, else heavy atoms only.
    """
    try:
        molecules = read_molecules(path)
    except MoleculeFileError as err:
        raise InputFileError(str(err)) from None
    reference, smiles = _reference(molecules, no_novelty)
    report = evaluate_molecules(molecules, smiles)
    if details is not None:
        try:
            report.write_csv(details)
        except OSError as err:
            raise click.ClickException(f"{details}: cannot write the details ({err.strerror})") from None
    if as_json:
        click.echo(json.dumps(report.summary | {"path": str(path), "novelty_reference": reference}))
    else:
        click.echo(_summary_text(path, report.summary, reference))
