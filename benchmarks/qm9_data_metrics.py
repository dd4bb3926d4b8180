"""EDM's metrics on real QM9 molecules: the "data" row that generated molecules are compared with.

    python -m benchmarks.qm9_data_metrics --setting qm9 [--split train] [--limit N] [--out FILE.json]

Deterministic (no randomness): the molecules are the first ``N`` of the split in ascending QM9
index. Novelty is measured against the training SMILES of the same setting.
"""
from __future__ import annotations

import argparse
import time

from benchmarks.record import command_line, emit, machine_info
from molctrl.data.qm9 import SETTINGS, SPLITS, load_split
from molctrl.metrics import evaluate_molecules, train_smiles

#: EDM (Hoogeboom et al., 2022, Table 1, "Data" row): QM9 training molecules with hydrogens.
EDM_REFERENCE = {"qm9": {"atom_stability": 0.990, "mol_stability": 0.952, "validity": 0.977}}


def run(setting: str, split: str, limit: int | None, command: str) -> dict:
    """Evaluate the first ``limit`` molecules of one split and return the result record."""
    t0 = time.perf_counter()
    molecules = load_split(setting, split).molecules()[:limit]
    t1 = time.perf_counter()
    reference = train_smiles(setting)
    t2 = time.perf_counter()
    report = evaluate_molecules(molecules, reference)
    t3 = time.perf_counter()
    return {
        "setting": setting,
        "split": split,
        "limit": limit,
        "metrics": report.summary,
        "n_train_smiles": len(reference),
        "edm_reference": EDM_REFERENCE.get(setting) if split == "train" else None,
        "seconds": {"load": round(t1 - t0, 2), "train_smiles": round(t2 - t1, 2), "evaluate": round(t3 - t2, 2)},
        "command": command,
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="qm9")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N molecules")
    parser.add_argument("--out", default=None, help="also write the JSON record to this file")
    args = parser.parse_args(argv)
    record = run(args.setting, args.split, args.limit, command_line("benchmarks.qm9_data_metrics", argv))
    emit(record, args.out)


if __name__ == "__main__":
    main()
