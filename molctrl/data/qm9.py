"""QM9: reading the CSVs shipped by the ``qm9pack`` package, a processed cache, and EDM's splits.

The raw data are 130,831 molecules (QM9 without the 3,054 uncharacterised ones), each with element
symbols, coordinates in Å and the quantum-chemical properties. Parsing the ~230 MB of CSV takes about
half a minute; the result is cached as one ``.npz`` (a second or so to load).

Splits follow EDM exactly: ``np.random.seed(0); perm = np.random.permutation(130831)`` over the
molecules in ascending QM9 index; ``perm[:100000]`` train, the next 17,748 valid, the last 13,083 test.
The train molecules, kept in ascending index order, are permuted with ``np.random.seed(42)``: the first
half is ``Da`` (evaluators) and the second half ``Db`` (generators and reward predictors).
"""
from __future__ import annotations

import csv
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

from molctrl.molecule import Molecule

N_MOLECULES = 130_831
N_TRAIN, N_VALID, N_TEST = 100_000, 17_748, 13_083
SPLITS = ("train", "valid", "test", "Da", "Db")
CACHE_VERSION = 1

HARTREE_TO_MEV = 27211.386245988

#: CSV column -> (cache key, factor to the package's units).
PROPERTY_COLUMNS = {
    "Polarizability_bohr3": ("alpha", 1.0),  # Bohr^3
    "HOMO_LUMO_gap_au": ("gap", HARTREE_TO_MEV),  # meV
    "HOMO_au": ("homo", HARTREE_TO_MEV),  # meV
    "LUMO_au": ("lumo", HARTREE_TO_MEV),  # meV
    "Dipole_debye": ("mu", 1.0),  # D
    "Heatcapacity_Cv_cal_mol_K": ("Cv", 1.0),  # cal/(mol K)
    "R2_bohr2": ("r2", 1.0),  # Bohr^2
    "ZPVE_au": ("zpve", HARTREE_TO_MEV),  # meV
    "InternalEnergy_0K_au": ("U0", HARTREE_TO_MEV),  # meV
}
PROPERTY_UNITS = {
    "alpha": "Bohr^3", "gap": "meV", "homo": "meV", "lumo": "meV", "mu": "D", "Cv": "cal/(mol K)",
    "r2": "Bohr^2", "zpve": "meV", "U0": "meV",
}


@dataclass(frozen=True)
class Setting:
    """Which atoms a model sees: ``qm9`` (with hydrogens) or ``qm9-noh`` (heavy atoms only)."""

    name: str
    atom_decoder: tuple[str, ...]
    max_atoms: int

    @property
    def remove_h(self) -> bool:
        return "H" not in self.atom_decoder

    @property
    def atom_encoder(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.atom_decoder)}


SETTINGS = {
    "qm9": Setting("qm9", ("H", "C", "N", "O", "F"), 29),
    "qm9-noh": Setting("qm9-noh", ("C", "N", "O", "F"), 9),
}


def get_setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r} (expected one of {', '.join(SETTINGS)})")
    return SETTINGS[name]


# ----------------------------------------------------------------------------------------------
# Raw data


def cache_dir() -> Path:
    """Where processed data live: ``$MOLCTRL_CACHE`` or ``~/.cache/molctrl``."""
    path = Path(os.environ.get("MOLCTRL_CACHE", Path.home() / ".cache" / "molctrl"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def qm9pack_csv_files() -> list[Path]:
    """The CSV files of the installed ``qm9pack`` distribution, found through package metadata.

    ``import qm9pack`` itself needs ``pkg_resources``, which modern environments lack.
    """
    try:
        dist = distribution("qm9pack")
    except PackageNotFoundError as err:
        raise FileNotFoundError("QM9 data need the 'qm9pack' package: pip install qm9pack") from err
    files = {Path(str(f)).name: Path(str(f.locate())) for f in dist.files or [] if str(f).endswith(".csv")}
    wanted = ["qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"]
    missing = [w for w in wanted if w not in files or not files[w].exists()]
    if missing:
        raise FileNotFoundError(f"qm9pack is installed but lacks {', '.join(missing)}")
    return [files[w] for w in wanted]


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SYMBOL = re.compile(r"'([A-Z][a-z]?)'")


def _parse_row(row: dict[str, str], path: Path, line: int) -> tuple[int, list[str], np.ndarray, str, list[float]]:
    try:
        symbols = _SYMBOL.findall(row["Elements"])
        coords = np.array([float(v) for v in _NUMBER.findall(row["XYZ_Ang"])], dtype=np.float64)
        n = int(row["N_atoms"])
        if len(symbols) != n or coords.size != 3 * n:
            raise ValueError(f"expected {n} atoms, got {len(symbols)} symbols and {coords.size} coordinates")
        props = [float(row[c]) * f for c, (_, f) in PROPERTY_COLUMNS.items()]
        return int(row["Index"]), symbols, coords.reshape(n, 3), row["SMILES"], props
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}:{line}: malformed QM9 row ({err})") from None


def read_qm9_csv(paths: list[Path]) -> dict[str, np.ndarray]:
    """Parse QM9 CSVs (qm9pack layout) into flat arrays sorted by QM9 index.

    Returns ``index (M,)``, ``n_atoms (M,)``, ``charges (M, 29)`` (atomic numbers, 0 = padding),
    ``positions (M, 29, 3)``, ``smiles (M,)`` and one ``(M,)`` array per property.
    """
    from rdkit.Chem import GetPeriodicTable

    table = GetPeriodicTable()
    records = []
    for path in paths:
        with open(path, newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                records.append(_parse_row(row, path, line))
    records.sort(key=lambda r: r[0])
    m = len(records)
    charges = np.zeros((m, 29), dtype=np.int8)
    positions = np.zeros((m, 29, 3), dtype=np.float64)
    for k, (_, symbols, coords, _, _) in enumerate(records):
        charges[k, : len(symbols)] = [table.GetAtomicNumber(s) for s in symbols]
        positions[k, : len(symbols)] = coords
    out = {
        "index": np.array([r[0] for r in records], dtype=np.int64),
        "n_atoms": (charges > 0).sum(1).astype(np.int64),
        "charges": charges,
        "positions": positions,
        "smiles": np.array([r[3] for r in records]),
    }
    props = np.array([r[4] for r in records], dtype=np.float64)
    for j, (key, _) in enumerate(PROPERTY_COLUMNS.values()):
        out[key] = props[:, j]
    return out


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_RAW: dict[str, dict[str, np.ndarray]] = {}


def load_raw(source: list[Path] | None = None, verbose: bool = True) -> dict[str, np.ndarray]:
    """All of QM9 as arrays (see :func:`read_qm9_csv`), from the cache or built once from ``qm9pack``."""
    key = "qm9pack" if source is None else "|".join(map(str, source))
    if key in _RAW:
        return _RAW[key]
    if source is None:
        cache = cache_dir() / f"qm9_v{CACHE_VERSION}.npz"
        if not cache.exists():
            if verbose:
                print(f"building the QM9 cache {cache} from qm9pack (once, ~30 s)", file=sys.stderr)
            raw = read_qm9_csv(qm9pack_csv_files())
            if len(raw["index"]) != N_MOLECULES:
                raise ValueError(f"qm9pack holds {len(raw['index'])} molecules, expected {N_MOLECULES}")
            _atomic_savez(cache, raw)
        with np.load(cache, allow_pickle=False) as data:
            _RAW[key] = {k: data[k] for k in data.files}
    else:
        _RAW[key] = read_qm9_csv(source)
    return _RAW[key]


# ----------------------------------------------------------------------------------------------
# Splits


def edm_split_indices(n_molecules: int = N_MOLECULES) -> dict[str, np.ndarray]:
    """Row numbers (into the index-sorted molecules) of EDM's splits, each in ascending order.

    ``Da``/``Db`` are taken from the train rows (ascending), permuted with seed 42, first/second half.
    """
    n_test = int(0.1 * n_molecules)
    n_train = round(n_molecules * N_TRAIN / N_MOLECULES)  # 100,000 for the full set
    n_valid = n_molecules - n_train - n_test
    state = np.random.RandomState(0)  # identical stream to np.random.seed(0); np.random.permutation
    perm = state.permutation(n_molecules)
    train, valid, test = np.split(perm, [n_train, n_train + n_valid])
    train = np.sort(train)
    half = np.random.RandomState(42).permutation(len(train))
    return {
        "train": train,
        "valid": np.sort(valid),
        "test": np.sort(test),
        "Da": train[half[: len(train) // 2]],
        "Db": train[half[len(train) // 2 :]],
    }


@dataclass
class QM9Split:
    """One split of QM9 in one setting, as padded arrays.

    Attributes:
        setting: the atom alphabet and maximum size.
        types: atom-type indices into ``setting.atom_decoder``, ``-1`` for padding, shape ``(M, N_max)``.
        positions: coordinates in Å, shape ``(M, N_max, 3)``, zero for padding.
        n_atoms: atoms per molecule, shape ``(M,)``.
        qm9_index: QM9 (gdb9) index of each molecule, shape ``(M,)``.
        properties: name -> ``(M,)`` array, units in :data:`PROPERTY_UNITS`.
        smiles: QM9's own SMILES, shape ``(M,)``.
    """

    setting: Setting
    types: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    qm9_index: np.ndarray
    properties: dict[str, np.ndarray]
    smiles: np.ndarray

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def mask(self) -> np.ndarray:
        """``(M, N_max)`` bool, true for real atoms."""
        return self.types >= 0

    def subset(self, rows: slice | np.ndarray) -> QM9Split:
        """The molecules at ``rows`` (a slice or index array) as a new split."""
        return QM9Split(self.setting, self.types[rows], self.positions[rows], self.n_atoms[rows],
                        self.qm9_index[rows], {k: v[rows] for k, v in self.properties.items()}, self.smiles[rows])

    def molecules(self) -> list[Molecule]:
        decoder = self.setting.atom_decoder
        return [
            Molecule([decoder[t] for t in self.types[k, :n]], self.positions[k, :n], f"qm9 index {self.qm9_index[k]}")
            for k, n in enumerate(self.n_atoms)
        ]

    def labels(self, properties: Sequence[str]) -> np.ndarray:
        """The named properties as columns, ``(M, len(properties))``."""
        return np.stack([self.properties[p] for p in properties], 1)

    def n_atoms_histogram(self) -> np.ndarray:
        """Counts of molecules per atom count, shape ``(N_max + 1,)``."""
        return np.bincount(self.n_atoms, minlength=self.setting.max_atoms + 1)


def _to_setting(raw: dict[str, np.ndarray], rows: np.ndarray, setting: Setting) -> QM9Split:
    from rdkit.Chem import GetPeriodicTable

    table = GetPeriodicTable()
    z_to_type = np.full(128, -1, dtype=np.int64)
    for i, sym in enumerate(setting.atom_decoder):
        z_to_type[table.GetAtomicNumber(sym)] = i
    charges = raw["charges"][rows].astype(np.int64)
    positions = raw["positions"][rows]
    keep = z_to_type[charges] >= 0  # drops padding, and hydrogens for the heavy-atom setting
    order = np.argsort(~keep, axis=1, kind="stable")  # kept atoms first, original order preserved
    keep = np.take_along_axis(keep, order, 1)[:, : setting.max_atoms]
    types = np.take_along_axis(z_to_type[charges], order, 1)[:, : setting.max_atoms]
    types = np.where(keep, types, -1)
    pos = np.take_along_axis(positions, order[..., None], 1)[:, : setting.max_atoms] * keep[..., None]
    return QM9Split(
        setting=setting,
        types=types.astype(np.int8),
        positions=pos.astype(np.float32),
        n_atoms=keep.sum(1),
        qm9_index=raw["index"][rows],
        properties={k: raw[k][rows] for k, _ in PROPERTY_COLUMNS.values()},
        smiles=raw["smiles"][rows],
    )


def load_split(setting: str, split: str, source: list[Path] | None = None) -> QM9Split:
    """Molecules of one EDM split (``train valid test Da Db``) in one setting (``qm9``, ``qm9-noh``).

    Positions are float32, as EDM used them; ``source`` reads other qm9pack-style CSVs instead.
    Rows of ``train``, ``valid`` and ``test`` are in ascending QM9 index (small molecules first), those
    of ``Da`` and ``Db`` in their random order: subsample the former at random, not by a prefix.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    raw = load_raw(source)
    rows = edm_split_indices(len(raw["index"]))[split]
    return _to_setting(raw, rows, get_setting(setting))
