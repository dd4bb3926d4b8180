"""GFN2-xTB (tblite) recomputation of molecules: the package's physical judge of property control.

The route of one molecule:

1. **Hydrogens.** A molecule with any hydrogen is taken as it is. A heavy-atom molecule (the ``qm9-noh``
   setting) gets the bond orders the metrics infer from its distances (EDM's rules,
   :func:`molctrl.io.to_rdkit`); RDKit sanitisation completes each atom's valence with hydrogens, which
   are placed at idealised positions and then relaxed by MMFF94 with every heavy atom held fixed — the
   generated heavy-atom geometry is what is judged, only the atoms the model never placed move. MMFF
   rather than xTB for the relaxation: milliseconds instead of about a second per molecule, and the
   calibration (``benchmarks.xtb_calibration``) measures what the route costs against DFT geometries.
   Hydroxyl hydrogens try their three staggered positions (:func:`_relax_hydrogens`). Where MMFF has no
   parameters, UFF relaxes the hydrogens; where neither has, they stay where RDKit put them.
2. **One GFN2-xTB single point**, neutral, lowest spin (one unpaired electron for an odd count):
   HOMO and LUMO (meV; the frontier orbitals of the occupation), gap = LUMO − HOMO, and the dipole
   magnitude |μ| (D).
3. **Static polarizability** α (Bohr³) from the dipole's response to a uniform field of ±F along each
   axis (central differences, F = 10⁻³ a.u.): α = ⅓ Σ_i [μ_i(+F e_i) − μ_i(−F e_i)] / 2F.

A molecule that fails any step gets NaN values and a one-line reason, never an exception. Molecules run
in worker processes, one thread each, with a per-molecule time limit (a worker past it is killed and
replaced). Every step is deterministic, so results do not depend on the number of workers.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from multiprocessing.connection import wait

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolTransforms
from rdkit.rdBase import BlockLogs

from molctrl.io import to_rdkit
from molctrl.molecule import Molecule

#: What a single point yields, in the units of :data:`molctrl.data.qm9.PROPERTY_UNITS`.
PHYSICS_PROPERTIES: tuple[str, ...] = ("alpha", "gap", "homo", "lumo", "mu")

BOHR_PER_ANGSTROM = 1 / 0.529177210903
HARTREE_TO_MEV = 27211.386245988
DEBYE_PER_AU = 2.541746473
FIELD_AU = 1e-3


class PhysicsUnavailable(RuntimeError):
    """tblite (GFN2-xTB) is not installed on this machine."""


def tblite_missing() -> str | None:
    """Why GFN2-xTB cannot run here, in one line, or ``None`` when tblite can be imported."""
    if find_spec("tblite") is None:
        return "GFN2-xTB needs the tblite package, which is not installed here (pip install tblite; wheels exist for Linux x86-64)"
    return None


def require_tblite() -> None:
    """Raise :class:`PhysicsUnavailable` with :func:`tblite_missing`'s reason when tblite cannot be imported."""
    if reason := tblite_missing():
        raise PhysicsUnavailable(reason)


def with_hydrogens(molecule: Molecule) -> tuple[list[str], np.ndarray]:
    """The molecule's symbols and positions ``(n, 3)`` in Å with every hydrogen explicit (step 1).

    Raises ``ValueError`` (one line) when the heavy-atom graph cannot be sanitised.
    """
    if "H" in molecule.symbols:
        return list(molecule.symbols), molecule.positions
    mol = Chem.RWMol(to_rdkit(molecule))
    try:
        with BlockLogs():
            Chem.SanitizeMol(mol)
    except ValueError as err:
        raise ValueError(f"no hydrogens could be placed: RDKit sanitisation failed ({str(err).splitlines()[0]})") from None
    mol = _relax_hydrogens(Chem.AddHs(mol, addCoords=True))
    return [a.GetSymbol() for a in mol.GetAtoms()], mol.GetConformer().GetPositions()


def _hydrogen_force_field(mol: Chem.Mol):
    """MMFF94 (else UFF; None if neither has parameters) over ``mol`` with every heavy atom fixed."""
    if AllChem.MMFFHasAllMoleculeParams(mol):
        force_field = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol))
    elif AllChem.UFFHasAllMoleculeParams(mol):
        force_field = AllChem.UFFGetMoleculeForceField(mol)
    else:
        return None
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() > 1:
            force_field.AddFixedPoint(atom.GetIdx())
    return force_field


def _hydroxyl_torsions(mol: Chem.Mol) -> list[tuple[int, int, int, int]]:
    """Torsions ``(A2, A1, X, H)`` that turn each O–H or S–H hydrogen about its X–A1 bond."""
    torsions = []
    for h in mol.GetAtoms():
        x = h.GetNeighbors()[0] if h.GetAtomicNum() == 1 and h.GetDegree() == 1 else None
        if x is None or x.GetAtomicNum() not in (8, 16) or x.GetDegree() != 2:
            continue
        a1 = next(a for a in x.GetNeighbors() if a.GetIdx() != h.GetIdx())
        a2 = [a.GetIdx() for a in a1.GetNeighbors() if a.GetIdx() != x.GetIdx()]
        if a2:
            torsions.append((a2[0], a1.GetIdx(), x.GetIdx(), h.GetIdx()))
    return torsions


def _relax_hydrogens(mol: Chem.Mol, max_iterations: int = 500) -> Chem.Mol:
    """The hydrogens' positions minimised with every heavy atom fixed (MMFF94, else UFF).

    A hydroxyl hydrogen has three staggered minima whose dipoles differ by up to several debye; each
    combination of 0°, 120°, 240° turns of the first three O–H/S–H groups is minimised and the lowest
    energy kept (the heavy-atom route's dipole correlation with DFT is recorded by
    ``benchmarks.xtb_calibration``)."""
    torsions = _hydroxyl_torsions(mol)[:3]
    best, lowest = mol, float("inf")
    with BlockLogs():
        for turns in itertools.product((0.0, 120.0, 240.0), repeat=len(torsions)):
            candidate = Chem.Mol(mol)
            conformer = candidate.GetConformer()
            for torsion, turn in zip(torsions, turns):
                rdMolTransforms.SetDihedralDeg(conformer, *torsion, rdMolTransforms.GetDihedralDeg(conformer, *torsion) + turn)
            force_field = _hydrogen_force_field(candidate)
            if force_field is None:
                return mol  # no force field: the hydrogens stay where RDKit placed them
            force_field.Minimize(maxIts=max_iterations)
            if (energy := force_field.CalcEnergy()) < lowest:
                best, lowest = candidate, energy
    return best


def single_point(symbols: Sequence[str], positions: np.ndarray, polarizability: bool = True) -> dict[str, float]:
    """GFN2-xTB values of one molecule with explicit hydrogens (steps 2 and 3), positions in Å.

    Returns ``{"homo", "lumo", "gap"}`` in meV, ``"mu"`` in D and ``"alpha"`` in Bohr³ (NaN unless
    ``polarizability``). Raises on an xTB failure (e.g. an SCC that does not converge).
    """
    from tblite.interface import Calculator
    from tblite.library import ffi

    numbers = np.array([Chem.GetPeriodicTable().GetAtomicNumber(s) for s in symbols])
    bohr = np.asarray(positions, dtype=np.float64) * BOHR_PER_ANGSTROM
    unpaired = int(numbers.sum()) % 2

    def run(field_au: np.ndarray | None = None):
        calculator = Calculator("GFN2-xTB", numbers, bohr, uhf=unpaired)
        calculator.set("verbosity", 0)
        if field_au is not None:
            calculator.add("electric-field", ffi.new("double[]", field_au.tolist()))
        return calculator.singlepoint()

    result = run()
    energies = np.asarray(result.get("orbital-energies")).reshape(-1)
    occupied = np.asarray(result.get("orbital-occupations")).reshape(len(energies), -1).sum(1) > 0.5
    homo_index = int(np.flatnonzero(occupied).max())
    homo, lumo = float(energies[homo_index] * HARTREE_TO_MEV), float(energies[homo_index + 1] * HARTREE_TO_MEV)
    values = {"homo": homo, "lumo": lumo, "gap": lumo - homo,
              "mu": float(np.linalg.norm(result.get("dipole"))) * DEBYE_PER_AU, "alpha": float("nan")}
    if polarizability:
        response = 0.0
        for axis in range(3):
            step = np.eye(3)[axis] * FIELD_AU
            response += (run(step).get("dipole")[axis] - run(-step).get("dipole")[axis]) / (2 * FIELD_AU)
        values["alpha"] = float(response / 3)
    return values


def judge(molecule: Molecule, polarizability: bool = True) -> tuple[dict[str, float], str]:
    """Steps 1–3 for one molecule: its values (NaN on failure) and a one-line reason ("" on success)."""
    if molecule.n_atoms == 0 or not np.isfinite(molecule.positions).all():
        return _failed(), "empty molecule or non-finite coordinates"
    try:
        symbols, positions = with_hydrogens(molecule)
        return single_point(symbols, positions, polarizability), ""
    except Exception as err:  # noqa: BLE001 - any failure of RDKit or xTB is a NaN row with its reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return _failed(), reason


def _failed() -> dict[str, float]:
    return dict.fromkeys(PHYSICS_PROPERTIES, float("nan"))


@dataclass
class PhysicsReport:
    """xTB values of a list of molecules: ``values[name]`` ``(M,)`` (NaN where a molecule failed),
    ``reasons`` one line per molecule ("" on success), and the wall seconds of the whole run."""

    values: dict[str, np.ndarray]
    reasons: list[str]
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        """How many molecules xTB could not judge."""
        return sum(bool(r) for r in self.reasons)


def _serve(connection) -> None:
    """Worker loop: receive ``(index, symbols, positions, polarizability)``, send back ``(index, values, reason)``."""
    os.environ["OMP_NUM_THREADS"] = "1"  # before tblite's OpenMP runtime starts
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        while (task := connection.recv()) is not None:
            index, symbols, positions, polarizability = task
            connection.send((index, *judge(Molecule(symbols, positions), polarizability)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent is gone (or stopped): nothing to report to
        return


class XTBWorkers:
    """A pool of worker processes that judge molecules (:func:`judge`) with a per-molecule time limit.

    Use as a context manager, or call :meth:`close`; one pool can serve many :meth:`run` calls (a reward
    reuses it across batches).
    """

    def __init__(self, workers: int | None = None, time_limit: float = 60.0):
        require_tblite()
        self.n_workers = max(1, workers or len(os.sched_getaffinity(0)))
        self.time_limit = time_limit
        self._context = multiprocessing.get_context("spawn")  # no inherited torch / OpenMP state
        self._workers: list[tuple] = []

    def _start(self):
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(child,), daemon=True)
        process.start()
        child.close()
        return process, parent

    def run(self, molecules: Sequence[Molecule], polarizability: bool = True,
            on_done: Callable[[int], None] | None = None) -> PhysicsReport:
        """Judge ``molecules`` (α only with ``polarizability``: six more single points each); ``on_done(k)``
        after each k finished molecules (for a progress bar)."""
        t0 = time.perf_counter()
        values = {name: np.full(len(molecules), np.nan) for name in PHYSICS_PROPERTIES}
        reasons = [""] * len(molecules)
        queue = list(range(len(molecules)))[::-1]
        while len(self._workers) < min(self.n_workers, len(molecules)):
            self._workers.append(self._start())
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (molecule index, start time)

        def dispatch(slot: int) -> None:
            if queue:
                index = queue.pop()
                molecule = molecules[index]
                self._workers[slot][1].send((index, molecule.symbols, molecule.positions, polarizability))
                busy[slot] = (index, time.perf_counter())

        for slot in range(len(self._workers)):
            dispatch(slot)
        while busy:
            deadline = min(start for _, start in busy.values()) + self.time_limit
            ready = wait([self._workers[s][1] for s in busy], timeout=max(0.0, deadline - time.perf_counter()))
            for slot in list(busy):
                connection = self._workers[slot][1]
                index, start = busy[slot]
                if connection in ready:
                    try:
                        _, result, reasons[index] = connection.recv()
                    except EOFError:  # the worker died inside tblite
                        self._replace(slot)
                        result, reasons[index] = _failed(), "the GFN2-xTB worker process crashed"
                elif time.perf_counter() - start > self.time_limit:
                    self._replace(slot)
                    result, reasons[index] = _failed(), f"GFN2-xTB exceeded the time limit of {self.time_limit:g} s"
                else:
                    continue
                for name in PHYSICS_PROPERTIES:
                    values[name][index] = result[name]
                del busy[slot]
                if on_done:
                    on_done(1)
                dispatch(slot)
        return PhysicsReport(values, reasons, time.perf_counter() - t0)

    def _replace(self, slot: int) -> None:
        self._workers[slot][0].kill()
        self._workers[slot] = self._start()

    def close(self) -> None:
        for process, connection in self._workers:
            try:
                connection.send(None)
                process.join(timeout=5)
            except (BrokenPipeError, OSError):
                pass
            if process.is_alive():
                process.kill()
        self._workers = []

    def __enter__(self) -> XTBWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def xtb_properties(molecules: Sequence[Molecule], workers: int | None = None, time_limit: float = 60.0,
                   polarizability: bool = True, on_done: Callable[[int], None] | None = None) -> PhysicsReport:
    """GFN2-xTB HOMO, LUMO, gap (meV), |μ| (D) and α (Bohr³) of every molecule, in parallel."""
    with XTBWorkers(workers, time_limit) as pool:
        return pool.run(molecules, polarizability, on_done)
