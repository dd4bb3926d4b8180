"""``molctrl evaluate``: EDM's metrics for the molecules in an XYZ or SDF file."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

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
@click.option("--physics", is_flag=True,
              help="Also recompute HOMO, LUMO, gap, dipole and polarizability by GFN2-xTB (tblite), mapped onto QM9's "
                   "DFT scale by the recorded calibration; the MAE to any target_<property> field of an SDF "
                   "(as 'molctrl generate' writes them). Heavy-atom molecules get hydrogens first.")
@click.option("--workers", type=click.IntRange(1), default=None, help="--physics: worker processes [default: one per core].")
def evaluate(path: Path, as_json: bool, details: Path | None, no_novelty: bool, physics: bool,
             workers: int | None) -> None:
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
    columns, physics_summary = _physics(molecules, workers) if physics else ({}, {})
    if details is not None:
        try:
            report.write_csv(details, columns)
        except OSError as err:
            raise click.ClickException(f"{details}: cannot write the details ({err.strerror})") from None
    if as_json:
        click.echo(json.dumps(report.summary | physics_summary | {"path": str(path), "novelty_reference": reference}))
    else:
        click.echo(_summary_text(path, report.summary, reference))
        if physics:
            click.echo(physics_text(physics_summary))


def _physics(molecules: list[Molecule], workers: int | None) -> tuple[dict, dict]:
    """The GFN2-xTB columns and summary of ``molecules``, with MAEs to their ``target_<p>`` fields."""
    from molctrl.physics import PHYSICS_PROPERTIES, tblite_missing
    from molctrl.xtb_reward import physics_check

    if missing := tblite_missing():
        raise click.ClickException(missing)
    targets = {p: np.array([_number(m.properties.get(f"target_{p}")) for m in molecules]) for p in PHYSICS_PROPERTIES
               if any(f"target_{p}" in m.properties for m in molecules)}
    return physics_check(molecules, targets, workers=workers)


def _number(value) -> float:
    return value if isinstance(value, float) else float("nan")


def physics_text(summary: dict) -> str:
    """The summary lines of a GFN2-xTB check (:func:`molctrl.xtb_reward.physics_check`)."""
    from molctrl.data.qm9 import PROPERTY_UNITS
    from molctrl.physics import PHYSICS_PROPERTIES

    lines = [(f"  GFN2-xTB            {summary['physics_judged']} molecules judged in {summary['physics_seconds']:.1f} s "
              "(values on the DFT scale by the recorded calibration)")]
    for p in PHYSICS_PROPERTIES:
        if f"physics_mean_{p}" in summary:
            mae = summary.get(f"physics_mae_{p}")
            lines.append(f"    {p:6s} mean {summary[f'physics_mean_{p}']:9.4g} {PROPERTY_UNITS[p]:7s}"
                         + ("" if mae is None else f"   MAE to targets {mae:.4g}"))
    return "\n".join(lines)
