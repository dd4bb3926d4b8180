"""``molctrl data``: build the QM9 cache, summarise it, export splits."""
from __future__ import annotations

import json
import time

import click

from molctrl.data.qm9 import SETTINGS, SPLITS, load_raw, load_split


@click.group()
def data() -> None:
    """QM9 data: cache, summaries and exports (EDM's splits)."""


@data.command()
def prepare() -> None:
    """Build the processed QM9 cache from the qm9pack package (once; ~10 s)."""
    t0 = time.perf_counter()
    raw = load_raw()
    click.echo(f"QM9: {len(raw['index'])} molecules ready in {time.perf_counter() - t0:.1f} s")


@data.command()
@click.option("--setting", type=click.Choice(list(SETTINGS)), default="qm9-noh", show_default=True)
def info(setting: str) -> None:
    """Print split sizes and atom-count histograms as JSON."""
    out = {}
    for split in SPLITS:
        s = load_split(setting, split)
        out[split] = {"molecules": len(s), "atoms": int(s.n_atoms.sum()),
                      "n_atoms_histogram": s.n_atoms_histogram().tolist()}
    click.echo(json.dumps({"setting": setting, "splits": out}, indent=1))


@data.command()
@click.option("--setting", type=click.Choice(list(SETTINGS)), default="qm9-noh", show_default=True)
@click.option("--split", type=click.Choice(list(SPLITS)), required=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .xyz or .sdf file.")
@click.option("--limit", type=int, default=None, help="Only the first LIMIT molecules of the split.")
def export(setting: str, split: str, out: str, limit: int | None) -> None:
    """Write a split's molecules; each title carries its QM9 index as ``qm9 index K``."""
    from molctrl.io import write_molecules

    molecules = load_split(setting, split).molecules()[:limit]
    write_molecules(out, molecules)
    click.echo(f"wrote {len(molecules)} molecules of {setting}/{split} to {out}")
