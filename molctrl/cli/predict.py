"""``molctrl predict``: properties of the molecules in an XYZ or SDF file."""
from __future__ import annotations

import json

import click

from common.cli import compute_device, compute_options
from molctrl.data.qm9 import PROPERTY_UNITS
from molctrl.predictor import PROPERTIES


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--property", "prop", type=click.Choice([*PROPERTIES, "all"]), required=True,
              help="Property to predict; all: the six, one column each.")
@click.option("--model", default="qm9-noh-egnn-Da", show_default=True,
              help="A shipped predictor (qm9-noh-{egnn,e3nn}-{Da,Db}) or a model.safetensors of 'molctrl train predictor'.")
@compute_options
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list with one number per molecule (one object per molecule with --property all).")
def predict(path, prop, model, device, threads, as_json) -> None:
    """Predict a QM9 property for every molecule in PATH (.xyz, .sdf or .mol).

    Units: alpha Bohr^3; gap, homo, lumo meV; mu D; Cv cal/(mol K). A heavy-atom (qm9-noh) model
    drops the file's hydrogens; a qm9 model needs them.
    """
    from molctrl.io import MoleculeFileError, read_molecules
    from molctrl.weights import load_predictor

    predictor = load_predictor(model).eval().to(compute_device(device, threads))
    names = predictor.properties if prop == "all" else (prop,)
    missing = [p for p in names if p not in predictor.properties]
    if missing:
        raise click.BadParameter(f"{model} does not predict {', '.join(missing)}", param_hint="--property")
    try:
        molecules = read_molecules(path)
        values = predictor.predict_molecules(molecules)
    except MoleculeFileError as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        raise click.ClickException(f"{path}: {err}") from None
    columns = [predictor.properties.index(p) for p in names]
    rows = [[float(v) for v in row[columns]] for row in values]
    if as_json:
        click.echo(json.dumps([r[0] for r in rows] if prop != "all" else [dict(zip(names, r)) for r in rows]))
        return
    click.echo("\t".join(["#", "title", *(f"{p} ({PROPERTY_UNITS[p]})" for p in names)]))
    for k, (mol, row) in enumerate(zip(molecules, rows)):
        click.echo("\t".join([str(k + 1), mol.title or "", *(f"{v:.4g}" for v in row)]))
