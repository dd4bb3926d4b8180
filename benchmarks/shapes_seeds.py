"""Mean and spread over sampling seeds of ``benchmarks.shapes_conditional`` records.

    python -m benchmarks.shapes_seeds benchmarks/results/shapes_conditional_seed{0,1,2}.json \\
        --baseline cond [--out benchmarks/results/shapes_conditional_seeds.json]

The records must score the same rows against the same references (same ``-n``, ``--points`` and
``--steps``; only ``--seed`` differs, so the test clouds are the same and only the samples change).
For each row and each metric of its three-class mean: the mean over seeds and the sample standard
deviation; and each class's mean over seeds. With ``--baseline ROW``, each other row's paired difference to it, seed by seed (row −
baseline), with its mean and standard error: the samples of two rows share the references, so the
paired difference removes the references' own variation. With ``--versus RECORDS`` (another sampler or
setting at the same seeds, in the same order), each row's paired difference to the same row there, or to
``--versus-row ROW`` of them (a row named for its own setting, e.g. a guidance window).
Metrics missing from a record (the EMD of a Chamfer-only run) are left out.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from benchmarks.record import command_line, emit

KEYS = ("accuracy", "1nna-cd", "1nna_smp-cd", "1nna_ref-cd", "1nna-emd", "cov-cd", "cov-emd", "mmd-cd", "mmd-emd")


def _keys(records: list[dict]) -> tuple[str, ...]:
    """The :data:`KEYS` that every row of every record has."""
    return tuple(k for k in KEYS if all(k in row["mean"] for r in records for row in r["rows"]))


def _table(records: list[dict], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row name -> ``(S, len(keys))`` three-class means, one line per record."""
    names = [[row["row"] for row in r["rows"]] for r in records]
    if any(n != names[0] for n in names):
        raise click.BadParameter("the records score different rows", param_hint="RECORDS")
    setup = [(r["samples_per_class"], r["points"], r["sampling_steps"], r.get("guidance_scale"),
              tuple(r.get("guidance_window") or ()), r.get("redraw", 0)) for r in records]
    if len(set(setup)) > 1:
        raise click.BadParameter(f"the records differ in samples, points, steps, guidance or redraw: {setup}",
                                 param_hint="RECORDS")
    return {name: np.array([[next(row for row in r["rows"] if row["row"] == name)["mean"][k] for k in keys]
                            for r in records]) for name in names[0]}


def _per_class(records: list[dict], name: str, keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Class -> metric -> mean over the records of row ``name``'s per-class value."""
    rows = [next(row for row in r["rows"] if row["row"] == name) for r in records]
    return {cls: {k: round(float(np.mean([row["classes"][cls][k] for row in rows])), 5) for k in keys}
            for cls in rows[0]["classes"]}


def _attributes(records: list[dict]) -> dict[str, list[dict]]:
    """Method -> its attribute rows with each error and accuracy averaged over the records (the rows of the first)."""
    def targets(record: dict) -> dict[str, list[tuple]]:
        return {m: [(row["class"], row["attribute"], row["targets"]) for row in rows]
                for m, rows in (record.get("attributes") or {}).items()}

    if any(targets(r) != targets(records[0]) for r in records):
        raise click.BadParameter("the records' attribute rows differ in method, class, attribute or targets",
                                 param_hint="RECORDS")
    return {method: [{k: v if not isinstance(v, float) else
                      round(float(np.mean([r["attributes"][method][i][k] for r in records])), 5)
                      for k, v in row.items()} for i, row in enumerate(rows)]
            for method, rows in (records[0].get("attributes") or {}).items()}


def _summary(values: np.ndarray, spread: str, keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per metric, the mean over seeds of ``values (S, len(keys))`` and its ``spread``: ``sd`` (sample
    standard deviation) or ``se`` (standard error of the mean); NaN from one seed."""
    s = values.std(0, ddof=1) if len(values) > 1 else np.full(values.shape[1], np.nan)
    if spread == "se":
        s = s / np.sqrt(len(values))
    return {k: {"mean": round(float(m), 5), spread: round(float(v), 5)} for k, m, v in zip(keys, values.mean(0), s)}


@click.command()
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--baseline", default=None, help="Row to which every other row is compared, seed by seed.")
@click.option("--versus", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A record of another setting at the same seed, one per RECORD in the same order (repeatable): "
                   "each row's paired difference to the same row there.")
@click.option("--versus-row", default=None, help="With --versus: compare every row to this row of the --versus "
              "records  [default: the row of the same name]")
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(records, baseline, versus, versus_row, out) -> None:
    """Aggregate shape benchmark records over seeds and print one JSON record."""
    loaded = [json.loads(Path(p).read_text()) for p in records]
    others = [json.loads(Path(p).read_text()) for p in versus]
    if others and [r["seed"] for r in others] != [r["seed"] for r in loaded]:
        raise click.BadParameter("give one --versus record per RECORD, at the same seeds in the same order",
                                 param_hint="--versus")
    keys = _keys(loaded + others)
    table = _table(loaded, keys)
    against = _table(others, keys) if others else {}
    if baseline is not None and baseline not in table:
        raise click.BadParameter(f"no row {baseline!r} (rows: {', '.join(table)})", param_hint="--baseline")
    if versus_row is not None and versus_row not in against:
        raise click.BadParameter(f"no row {versus_row!r} in the --versus records (rows: {', '.join(against)})",
                                 param_hint="--versus-row")
    rows = []
    for name, values in table.items():
        row = {"row": name, "over_seeds": _summary(values, "sd", keys), "per_class": _per_class(loaded, name, keys)}
        if baseline is not None and name != baseline:
            row["minus_baseline"] = _summary(values - table[baseline], "se", keys)
        if (versus_row or name) in against:
            row["minus_versus"] = _summary(values - against[versus_row or name], "se", keys)
        rows.append(row)
    emit({"records": list(records), "versus": list(versus), "versus_row": versus_row,
          "seeds": [r["seed"] for r in loaded], "baseline": baseline, "rows": rows, "attributes": _attributes(loaded),
          "command": command_line("benchmarks.shapes_seeds")}, out, indent=1)


if __name__ == "__main__":
    main()
