"""How well GFN2-xTB (tblite) reproduces QM9's DFT properties, by the route generated molecules take.

    python -m benchmarks.xtb_calibration -n 1000 --seed 0 --workers 1 \\
        --out benchmarks/results/xtb_calibration.json --write-map molctrl/weights/xtb-calibration.json

``n`` molecules drawn at random (``numpy.random.default_rng(seed)``, without replacement) from EDM's test
split are judged twice by :func:`molctrl.physics.xtb_properties`: from their full DFT geometry with
hydrogens (``with_hydrogens``), and from their heavy atoms alone, hydrogens added and relaxed as for a
generated ``qm9-noh`` molecule (``heavy_atoms``). Per property and route: Pearson and Spearman
correlation with the DFT label, the least-squares map DFT ≈ q(xTB) (a quadratic,
:func:`molctrl.xtb_reward.fit_map`), its residual standard deviation, the MAE after the map (in sample, and
held out: fitted on every other molecule and scored on the rest, both ways), the held-out MAE of a
least-squares line for comparison, the failures (NaN, with
their reasons counted), and the wall time. ``--write-map`` stores the maps where
:class:`molctrl.xtb_reward.XTBCalibration` reads them.
"""
from __future__ import annotations

import json
import sys
from collections import Counter

import click
import numpy as np
from tqdm import tqdm

from benchmarks.record import command_line, emit, machine_info
from common.runtime import atomic_open
from molctrl.data.qm9 import load_split
from molctrl.physics import PHYSICS_PROPERTIES, xtb_properties
from molctrl.xtb_reward import ROUTES, agreement

SETTINGS = {"with_hydrogens": "qm9", "heavy_atoms": "qm9-noh"}


@click.command()
@click.option("-n", "n_molecules", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="Worker processes [default: one per core].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the record here too.")
@click.option("--write-map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Write the calibration maps here (the package reads molctrl/weights/xtb-calibration.json).")
def main(n_molecules: int, seed: int, workers: int | None, out: str | None, map_path: str | None) -> None:
    """Calibrate GFN2-xTB against QM9's DFT labels on random test molecules; print one JSON record."""
    record = {"split": "test", "n": n_molecules, "seed": seed, "routes": {}}
    heavy_atoms = load_split("qm9-noh", "test").n_atoms
    rows = np.sort(np.random.default_rng(seed).choice(len(heavy_atoms), n_molecules, replace=False))
    for route in ROUTES:
        sample = load_split(SETTINGS[route], "test").subset(rows)
        with tqdm(total=n_molecules, desc=f"xtb {route}", unit="mol", disable=None) as bar:
            report = xtb_properties(sample.molecules(), workers, on_done=bar.update)
        record["routes"][route] = {
            "setting": SETTINGS[route], "seconds": round(report.seconds, 1),
            "mean_heavy_atoms": round(float(heavy_atoms[rows].mean()), 2),
            "failure_reasons": dict(Counter(r for r in report.reasons if r).most_common(5)),
            "properties": {p: agreement(report.values[p], sample.properties[p]) for p in PHYSICS_PROPERTIES}}
        print(f"{route}: {report.seconds:.1f} s, {report.failures} failures", file=sys.stderr)
    record |= {"workers": workers, "command": command_line("benchmarks.xtb_calibration"),
               "machine": machine_info()}
    if map_path:
        keys = ("coefficients", "domain", "residual_std")
        maps = {route: {p: {k: v[k] for k in keys} for p, v in record["routes"][route]["properties"].items()}
                for route in ROUTES}
        with atomic_open(map_path) as handle:
            handle.write(json.dumps({"maps": maps, "n": n_molecules, "seed": seed, "command": record["command"]},
                                    indent=1) + "\n")
    emit(record, out)


if __name__ == "__main__":
    main()
