"""GFN2-xTB on the DFT scale: the calibration map, and the physics likelihood as a reward.

xTB's orbital energies and polarizabilities sit on their own scale (its gap is about half of QM9's
B3LYP gap). ``benchmarks.xtb_calibration`` fits, per property and per route (molecules given with
hydrogens, or heavy atoms completed by :func:`molctrl.physics.with_hydrogens`), the least-squares map
DFT ≈ q(xTB) (:class:`CalibrationMap`, a quadratic) on random test-split molecules and records it with the
residual standard deviation s in :data:`CALIBRATION_FILE`. A generated molecule's xTB value is mapped by
the map of its route; the reward is the likelihood of the targets under that map,

    r(x) = Σ_k m_k · log N(y_k; q_k(xTB_k(x)), s_k²)   (Huber tails beyond 3 s),

which needs no gradient: best-of-N, the SMC sampler's final weights and RGDM's K-candidate estimator use it.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import Tensor, nn

from common.rewards import (
    GaussianLogLikelihood,
    Reward,
    WeightedSum,
    gaussian_log_density,
)
from molctrl.molecule import Molecule
from molctrl.physics import (
    PHYSICS_PROPERTIES,
    PhysicsReport,
    XTBWorkers,
    xtb_properties,
)
from molctrl.predictor import PROPERTIES, TAIL

CALIBRATION_FILE = Path(__file__).parent / "weights" / "xtb-calibration.json"
ROUTES = ("with_hydrogens", "heavy_atoms")

#: log-likelihood per judged property of a molecule xTB could not judge: that of a 10 s miss.
FAILED_LOG_LIKELIHOOD = -50.0


@dataclass(frozen=True)
class CalibrationMap:
    """DFT ≈ q(xTB) = c₂·xTB² + c₁·xTB + c₀ over the calibrated range ``domain = (lo, hi)`` of xTB values,
    continued beyond it by the tangent at the nearer end (so the map stays monotone where q is), with the
    residual standard deviation of the fit."""

    coefficients: tuple[float, float, float]
    domain: tuple[float, float]
    residual_std: float

    def __call__(self, xtb: np.ndarray) -> np.ndarray:
        xtb = np.asarray(xtb, dtype=np.float64)
        inside = np.clip(xtb, *self.domain)
        slope = np.polyval(np.polyder(self.coefficients), inside)
        return np.polyval(self.coefficients, inside) + slope * (xtb - inside)


def fit_map(xtb: np.ndarray, dft: np.ndarray) -> CalibrationMap:
    """The least-squares quadratic from xTB to DFT over the rows where xTB succeeded.

    Quadratic rather than linear: xTB compresses the large gaps of saturated molecules, which a line
    cannot follow (the quadratic's held-out MAE is recorded by ``benchmarks.xtb_calibration``)."""
    ok = np.isfinite(xtb)
    coefficients = np.polyfit(xtb[ok], dft[ok], 2)
    residual = dft[ok] - np.polyval(coefficients, xtb[ok])
    return CalibrationMap(tuple(float(c) for c in coefficients), (float(xtb[ok].min()), float(xtb[ok].max())),
                          float(residual.std(ddof=3)))


def _held_out_mae(xtb: np.ndarray, dft: np.ndarray, fit) -> float:
    """Two-fold held-out MAE of the map ``fit(xtb, dft)`` (fitted on every other molecule, scored on the rest,
    both ways)."""
    ok = np.isfinite(xtb)
    half = np.arange(len(xtb)) % 2 == 0
    errors = [np.abs(fit(xtb[a], dft[a])(xtb[b & ok]) - dft[b & ok]) for a, b in ((half, ~half), (~half, half))]
    return round(float(np.concatenate(errors).mean()), 4)


def _line(xtb: np.ndarray, dft: np.ndarray) -> np.poly1d:
    ok = np.isfinite(xtb)
    return np.poly1d(np.polyfit(xtb[ok], dft[ok], 1))


def agreement(xtb: np.ndarray, dft: np.ndarray) -> dict:
    """Pearson and Spearman correlation of xTB with DFT, the fitted map and the MAE after it, in sample
    and held out, and the held-out MAE after a least-squares line instead (the simpler map it replaces)."""
    ok = np.isfinite(xtb)
    quadratic = fit_map(xtb, dft)
    return {"n": int(ok.sum()), "failures": int((~ok).sum()),
            "pearson": round(float(pearsonr(xtb[ok], dft[ok])[0]), 4),
            "spearman": round(float(spearmanr(xtb[ok], dft[ok])[0]), 4),
            "mae_after_map": round(float(np.abs(quadratic(xtb[ok]) - dft[ok]).mean()), 4),
            "mae_after_map_held_out": _held_out_mae(xtb, dft, fit_map),
            "mae_after_line_held_out": _held_out_mae(xtb, dft, _line)} | asdict(quadratic)


@dataclass
class XTBCalibration:
    """The recorded maps, ``maps[route][property]``."""

    maps: dict[str, dict[str, CalibrationMap]]

    @classmethod
    def load(cls, path: str | Path = CALIBRATION_FILE) -> XTBCalibration:
        """Read a record of ``benchmarks.xtb_calibration --write-map``; one-line ``ValueError`` if malformed."""
        try:
            record = json.loads(Path(path).read_text())
            maps = {route: {name: CalibrationMap(tuple(m["coefficients"]), tuple(m["domain"]), m["residual_std"])
                            for name, m in ((p, record["maps"][route][p]) for p in PHYSICS_PROPERTIES)}
                    for route in ROUTES}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not an xTB calibration record ({type(err).__name__}: {err})") from None
        return cls(maps)

    def to_dft(self, report: PhysicsReport, molecules: Sequence[Molecule]) -> dict[str, np.ndarray]:
        """Each molecule's xTB values on the DFT scale, by the map of its route; NaN where xTB failed."""
        with_h = np.array(["H" in m.symbols for m in molecules], dtype=bool)
        return {name: np.where(with_h, self.maps["with_hydrogens"][name](report.values[name]),
                               self.maps["heavy_atoms"][name](report.values[name]))
                for name in PHYSICS_PROPERTIES}


class XTBRegressor(nn.Module):
    """States → GFN2-xTB values on the DFT scale, ``(B, P)`` for the given properties (NaN where xTB failed);
    one pool of worker processes for the regressor's lifetime."""

    def __init__(self, decode: Callable[[Tensor, Tensor], list[Molecule]], properties: Sequence[str],
                 calibration: XTBCalibration, workers: int | None = None, time_limit: float = 60.0):
        super().__init__()
        self.decode, self.properties, self.calibration = decode, list(properties), calibration
        self.workers = XTBWorkers(workers, time_limit)

    @torch.no_grad()
    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        molecules = self.decode(x, mask)
        report = self.workers.run(molecules, polarizability="alpha" in self.properties)
        dft = self.calibration.to_dft(report, molecules)
        return torch.as_tensor(np.stack([dft[p] for p in self.properties], 1), dtype=x.dtype, device=x.device)


class XTBLikelihood(GaussianLogLikelihood):
    """The calibrated GFN2-xTB likelihood of property targets (module docstring), without gradients: a
    :class:`common.rewards.GaussianLogLikelihood` whose regressor is xTB, so it scores pools
    (``predict`` once, ``log_likelihood`` per target) as a predictor's likelihood does.

    Args:
        decode: states to molecules, ``decode(x (B, N, C), mask (B, N)) -> B molecules``.
        properties: the properties it judges (any of :data:`molctrl.physics.PHYSICS_PROPERTIES`); targets
            ``y (B, 6)`` hold one column per property of :data:`molctrl.predictor.PROPERTIES`. α costs six
            more single points per molecule: leave it out unless it is a target.
        calibration: the DFT-scale maps (default: the shipped record); s is the residual of the
            ``route`` the decoded molecules take (``heavy_atoms`` for the package's qm9-noh models).
        workers, time_limit: of the :class:`molctrl.physics.XTBWorkers` kept for the reward's lifetime.

    A molecule xTB cannot judge scores :data:`FAILED_LOG_LIKELIHOOD` per judged target.
    """

    differentiable = False

    def __init__(self, decode: Callable[[Tensor, Tensor], list[Molecule]], properties: Sequence[str],
                 calibration: XTBCalibration | None = None, route: str = "heavy_atoms", workers: int | None = None,
                 time_limit: float = 60.0):
        unknown = [p for p in properties if p not in PHYSICS_PROPERTIES]
        if unknown or not properties:
            raise ValueError(f"GFN2-xTB cannot judge {', '.join(unknown) or 'no property'} "
                             f"(it judges {', '.join(PHYSICS_PROPERTIES)})")
        calibration = calibration or XTBCalibration.load()
        super().__init__(XTBRegressor(decode, properties, calibration, workers, time_limit),
                         [calibration.maps[route][p].residual_std for p in properties],
                         target_columns=[PROPERTIES.index(p) for p in properties], tail=TAIL)

    def log_likelihood(self, mean: Tensor, y: Tensor | None, y_mask: Tensor | None = None,
                       scale: Tensor | None = None) -> Tensor:
        """As the Gaussian's, with a failed molecule's (NaN) columns scored :data:`FAILED_LOG_LIKELIHOOD`."""
        if y is None:
            raise ValueError("the xTB likelihood needs targets y of shape (B, 6); got None")
        y = self._target_view(y)
        wanted = torch.ones_like(y, dtype=torch.bool) if y_mask is None else self._target_view(y_mask).bool()
        failed = ~torch.isfinite(mean)
        scale = (self.scale if scale is None else scale).to(mean.dtype)
        judged = gaussian_log_density(y, mean.nan_to_num(), scale, wanted & ~failed, self.tail)
        return judged + FAILED_LOG_LIKELIHOOD * (wanted & failed).sum(-1)

    def close(self) -> None:
        self.regressor.workers.close()


def physics_check(molecules: Sequence[Molecule], targets: dict[str, np.ndarray] | None = None,
                  properties: Sequence[str] = PHYSICS_PROPERTIES, workers: int | None = None,
                  calibration: XTBCalibration | None = None,
                  on_done: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, float | int]]:
    """Judge ``molecules`` by GFN2-xTB and put the result on them.

    Each molecule gets the SDF fields ``xtb_<p>`` (xTB's own value) and ``xtb_<p>_dft`` (on the DFT scale)
    for every judged property, or ``xtb_failure`` (its reason). Returns the per-molecule columns
    (``xtb_<p>``, ``xtb_<p>_dft``, ``xtb_failure``) and a summary: the molecules judged, and per property
    the mean on the DFT scale and, for ``targets[p]`` (a value per molecule), the MAE to the target over
    the judged molecules (``physics_mae_<p>``).
    """
    calibration = calibration or XTBCalibration.load()
    report = xtb_properties(molecules, workers, polarizability="alpha" in properties, on_done=on_done)
    dft = calibration.to_dft(report, molecules)
    columns: dict[str, np.ndarray] = {"xtb_failure": np.array(report.reasons, dtype=object)}
    judged = np.array([not r for r in report.reasons])
    summary: dict[str, float | int] = {"physics_judged": int(judged.sum()), "physics_seconds": round(report.seconds, 1)}
    for p in properties:
        columns[f"xtb_{p}"], columns[f"xtb_{p}_dft"] = report.values[p], dft[p]
        summary[f"physics_mean_{p}"] = float(np.nanmean(dft[p])) if judged.any() else float("nan")
        if targets and p in targets:
            error = np.abs(dft[p] - np.broadcast_to(targets[p], dft[p].shape))
            summary[f"physics_mae_{p}"] = float(np.nanmean(error)) if judged.any() else float("nan")
    for k, m in enumerate(molecules):
        if report.reasons[k]:
            m.properties["xtb_failure"] = report.reasons[k]
        else:
            m.properties |= {name: round(float(c[k]), 4) for name, c in columns.items() if name != "xtb_failure"}
    return columns, summary


#: What a steered sampler's final weights (or a best-of ranking) read: the reward predictor alone, the
#: GFN2-xTB likelihood alone, or both (the product of the two likelihoods, xTB on gap/HOMO/LUMO/μ).
JUDGES = ("model", "xtb", "both")
BOTH_JUDGED = ("gap", "homo", "lumo", "mu")  # α's xTB ranks DFT's poorly (Spearman 0.76) and costs 6 more points


def effective_judge(judge: str, properties: Sequence[str]) -> str:
    """``judge`` as it acts on targets of ``properties``: ``both`` with no target among :data:`BOTH_JUDGED`
    is the predictor alone, ``model``."""
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r} (expected one of {', '.join(JUDGES)})")
    return "model" if judge == "both" and not set(properties) & set(BOTH_JUDGED) else judge


def final_judge(judge: str, reward: Reward, decode: Callable[[Tensor, Tensor], list[Molecule]],
                properties: Sequence[str], judge_reward: Reward | None = None) -> Reward | None:
    """The final reward of ``judge`` for targets of ``properties`` (None: ``reward`` itself).

    ``model`` reads the predictor: ``judge_reward`` when given (a second, more accurate predictor that
    reads only the finished particles, while ``reward`` steers the path), else ``reward``. ``xtb``
    judges every targeted property (all must be ones xTB gives); ``both`` adds the xTB likelihood of the
    targets among :data:`BOTH_JUDGED` to the predictor's — two independent measurements of the same
    property, so the target p_pre·exp((r_model + r_xtb)/τ) asks both to agree."""
    judge = effective_judge(judge, properties)
    if judge == "xtb":
        return XTBLikelihood(decode, list(properties))
    if judge == "model":
        return judge_reward
    judged = [p for p in properties if p in BOTH_JUDGED]
    return WeightedSum([(1.0, judge_reward or reward), (1.0, XTBLikelihood(decode, judged))])
