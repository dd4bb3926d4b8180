"""Speed of the molecule denoiser: reverse steps and training steps per second, optionally against EDM.

    python -m benchmarks.speed [--device auto|cpu|cuda] [--repeats K] [--edm-repo PATH] [--out FILE.json]

Two configurations: ``edm`` (EDM's QM9 model: setting ``qm9`` with hydrogens, 9 layers, 256 features,
29 atoms, batch 64) and ``shipped`` (``qm9-noh``, 6 layers, 128 features, 9 atoms, batch 64). For each:

* reverse step: one denoiser forward under ``torch.no_grad()``;
* training step: loss forward + backward + AdamW step (EDM's optimiser settings: amsgrad, wd 1e-12).

With ``--edm-repo`` (a local checkout of github.com/ehoogeboom/e3_diffusion_for_molecules) EDM's own
``EGNN_dynamics_QM9`` is imported from that checkout at run time and timed at the ``edm``
configuration, interleaved with ours (round robin, so that background load hits both alike); the JSON
then holds the speed-ups ours/EDM. Each workload (the reverse and the training step of ours at each
``--precision`` and of EDM's) runs in a process of its own, which the benchmark drives in turn: in one
process they sped up or slowed down one another by up to 60 % (:class:`IsolatedWorkload`). Inputs are
random but valid (fixed seed), full molecules (every mask entry true). Times are medians over
``--repeats`` measurements, each of them averaging enough calls to last at least ``--min-time`` seconds.

Two sections with the shipped ``qm9-noh`` prior, after the timings:

* ``--row STEPS:SOLVER`` (repeatable): ``--sampling-n`` molecules per sampler, their molecules per second
  beside validity, uniqueness and novelty (:func:`benchmarks.prior_samples.score_samplers`);
* ``--steered K:STEPS:SOLVER`` (repeatable): SMC at K particles per molecule for ``--steered-n`` molecules
  with α = 70 (the main job's reward, τ and prior proposal; the final weights by the predictor alone),
  its seconds per output molecule and the share of them spent in the reward (forward and the gradient
  its widened potential reads).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from benchmarks.record import device_name, emit
from common.runtime import PRECISIONS, resolve_device, reuse_freed_memory, set_precision
from molctrl.prior import MoleculeDiffusion, PriorConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchConfig:
    """One model size and batch shape to time."""

    setting: str
    hidden: int
    n_layers: int
    n_atoms: int
    batch: int = 64


CONFIGS: dict[str, BenchConfig] = {
    "edm": BenchConfig("qm9", hidden=256, n_layers=9, n_atoms=29),
    "shipped": BenchConfig("qm9-noh", hidden=128, n_layers=6, n_atoms=9),
}

#: Which configurations EDM's implementation is timed at (its own published size only).
EDM_CONFIGS = ("edm",)


# -- timing ----------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call_seconds(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Mean wall-clock seconds of ``n`` consecutive calls of ``fn``."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / n


def time_interleaved(timers: dict[str, Callable[[int], float]], repeats: int, warmup: int = 2,
                     min_time: float = 0.2) -> dict[str, dict]:
    """Time every workload in round robin: ``repeats`` rounds, each timing every workload once.

    ``timers[name](n)`` runs a workload ``n`` times and returns the mean seconds per call (here, or in
    the workload's own process: :class:`IsolatedWorkload`). Interleaving (with the starting workload
    rotating between rounds) makes background load fall on all of them alike. Each measurement averages
    ``n`` calls, ``n`` chosen after the warm-up so that it lasts at least ``min_time`` seconds (warm-up
    stops after its second call once it has taken 5 s). Returns per name the per-call milliseconds of
    every round, the calls per measurement and the first call's milliseconds (with ``torch.compile``:
    the compilation).
    """
    inner, first = {}, {}
    for name, timer in timers.items():
        seconds, spent = math.inf, 0.0
        for k in range(max(warmup, 1)):  # calls of several seconds need no third warm-up call
            seconds = timer(1)
            first.setdefault(name, seconds)
            spent += seconds
            if spent > 5.0 and k:
                break
        inner[name] = max(1, math.ceil(min_time / max(seconds, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in timers}
    names = list(timers)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(1000.0 * timers[name](inner[name]))
    return {name: {"ms": samples[name], "calls_per_measurement": inner[name], "first_call_ms": 1000.0 * first[name]}
            for name in names}


def local_timers(fns: dict[str, Callable[[], object]], device: torch.device) -> dict[str, Callable[[int], float]]:
    """Timers (for :func:`time_interleaved`) of workloads run in this process."""
    return {name: partial(_call_seconds, fn, device=device) for name, fn in fns.items()}


class IsolatedWorkload:
    """One workload built and run in a process of its own, timed from this one.

    Workloads in one process disturb each other through the heap they leave behind: at EDM's size our
    reverse step took 2.82 s in the process that also trained and 1.78 s in its own, EDM's 3.78 s after
    ours and 6.14 s in its own (glibc's adaptive mmap threshold, fragmentation; after ``torch.compile``,
    inductor's state; docs/molecules.md). A sampling job and a training job are separate processes, so
    each workload gets one here. The worker is started with ``spawn`` (a fresh interpreter), sets its
    threads and allocator, builds ``build() -> (workloads, n_parameters)``, keeps the workload ``name``
    and then answers ``n`` with the mean seconds of ``n`` calls; the parent only waits, so the workers
    of one run take turns on the same cores.
    """

    def __init__(self, build: Callable[[], tuple[dict[str, Callable[[], object]], int]], name: str,
                 device: torch.device, threads: int, no_mmap: bool):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, build, name, device, threads, no_mmap),
                                        daemon=True)
        self._process.start()
        child.close()
        self.n_parameters = self._receive()

    def _exited(self) -> RuntimeError:
        self._process.join(timeout=10)
        return RuntimeError(f"the benchmark worker exited (status {self._process.exitcode})")

    def _receive(self):
        try:
            answer = self._conn.recv()
        except EOFError:
            raise self._exited() from None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def seconds_per_call(self, n: int) -> float:
        """Mean seconds of ``n`` consecutive calls, run in the worker (a timer of :func:`time_interleaved`)."""
        try:
            self._conn.send(n)
        except BrokenPipeError:
            raise self._exited() from None
        return self._receive()

    def close(self) -> None:
        """Stop the worker (one that has already exited is left as it is, so its error stays the one raised)."""
        if self._process.is_alive():
            self._conn.send(None)
        self._process.join(timeout=60)


def _serve(conn, build, name: str, device: torch.device, threads: int, no_mmap: bool) -> None:
    """The loop of an :class:`IsolatedWorkload` worker."""
    try:
        torch.set_num_threads(threads)
        if no_mmap:
            reuse_freed_memory()
        fns, n_parameters = build()
        fn = fns[name]
        del fns
        conn.send(n_parameters)
    except Exception as err:  # noqa: BLE001 (handed to the parent, which raises it)
        conn.send(err)
        return
    while (n := conn.recv()) is not None:
        conn.send(_call_seconds(fn, n, device))


def _summary(ms: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(ms)
    return {"ms": round(median, 3), "molecules_per_s": round(batch * 1000.0 / median, 2),
            "ms_all": [round(v, 3) for v in ms]}


def _paired_speedup(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of EDM's time / our time in the same round."""
    return round(statistics.median(t / o for o, t in zip(ours, theirs, strict=True)), 3)


# -- our model ------------------------------------------------------------------------------------


def _optimizer(params) -> torch.optim.Optimizer:
    """EDM's optimiser (``qm9/models.py:get_optim``), also the one our trainer uses."""
    return torch.optim.AdamW(params, lr=1e-4, amsgrad=True, weight_decay=1e-12)


def _train_step(model: nn.Module, loss_fn: Callable[[], torch.Tensor],
                opt: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
    return step


def ours_workloads(cfg: BenchConfig, device: torch.device, seed: int = 0, compile_denoiser: bool = False,
                   precision: str = "fp32") -> tuple[dict[str, Callable[[], object]], int]:
    """Our reverse step and training step at ``cfg`` with the matrix products in ``precision``;
    returns the callables and the parameter count."""
    torch.manual_seed(seed)
    hist = np.zeros(cfg.n_atoms + 1)
    hist[cfg.n_atoms] = 1.0
    config = PriorConfig(setting=cfg.setting, hidden=cfg.hidden, n_layers=cfg.n_layers)
    model = set_precision(MoleculeDiffusion(config, hist).to(device), precision)
    if compile_denoiser:
        model.denoiser.egnn.compile_slices()
    gen = torch.Generator().manual_seed(seed)
    types = torch.randint(0, model.n_types, (cfg.batch, cfg.n_atoms), generator=gen).to(device)
    positions = (1.5 * torch.randn(cfg.batch, cfg.n_atoms, 3, generator=gen)).to(device)
    x, mask = model.encode(types, positions)
    t_int = torch.randint(0, model.diffusion.n_steps + 1, (cfg.batch,), generator=gen).to(device)
    z, _ = model.diffusion.add_noise(x, t_int, mask)
    t = t_int.float() / model.diffusion.n_steps

    def reverse() -> torch.Tensor:
        with torch.no_grad():
            return model.denoiser(z, t, mask)

    model.train()
    opt = _optimizer(model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    return {"reverse_step": reverse, "train_step": _train_step(model, lambda: model(types, positions), opt)}, n_params


# -- EDM's model ----------------------------------------------------------------------------------

EDM_WORKLOAD = (
    "EGNN_dynamics_QM9(in_node_nf=types+charge+time, context_node_nf=0, n_dims=3, attention=True, tanh=True, "
    "norm_constant=1, inv_sublayers=1, sin_embedding=False, normalization_factor=1, aggregation_method='sum', "
    "mode='egnn_dynamics'); reverse step = _forward under no_grad; train step = _forward + MSE to a random "
    "target + backward + AdamW(amsgrad) step (ours: the full diffusion loss, noise sampling included)"
)


def load_edm_dynamics(edm_repo: str | Path) -> type:
    """``EGNN_dynamics_QM9`` from ``egnn/models.py`` of a local EDM checkout (nothing is copied)."""
    root = str(Path(edm_repo).resolve())
    if not (Path(root) / "egnn" / "models.py").is_file():
        raise click.BadParameter(f"{root} has no egnn/models.py (not an EDM checkout?)")
    sys.path.insert(0, root)
    try:
        from egnn.models import EGNN_dynamics_QM9
    finally:
        sys.path.remove(root)
    return EGNN_dynamics_QM9


def edm_provenance(edm_repo: str | Path) -> dict[str, str | None]:
    """Where EDM's code came from: its git commit when readable, and hashes of the two model files."""
    root = Path(edm_repo).resolve()
    digest = hashlib.sha256()
    for rel in ("egnn/models.py", "egnn/egnn_new.py"):
        digest.update((root / rel).read_bytes())
    return {"path": str(root), "commit": _git_commit(root), "sha256_models_egnn_new": digest.hexdigest()}


def edm_workloads(cfg: BenchConfig, device: torch.device, edm_repo: str | Path,
                  seed: int = 0) -> tuple[dict[str, Callable[[], object]], int]:
    """EDM's ``EGNN_dynamics_QM9._forward`` and an MSE training step at ``cfg`` (EDM's qm9 arguments)."""
    dynamics_cls = load_edm_dynamics(edm_repo)
    n_types = 5 if cfg.setting == "qm9" else 4
    in_node_nf = n_types + 1  # one-hot types + the charge feature (include_charges=True)
    torch.manual_seed(seed)
    model = dynamics_cls(
        in_node_nf=in_node_nf + 1,  # EDM's get_model adds the time feature (condition_time=True)
        context_node_nf=0, n_dims=3, hidden_nf=cfg.hidden, device=str(device), act_fn=nn.SiLU(),
        n_layers=cfg.n_layers, attention=True, tanh=True, mode="egnn_dynamics", norm_constant=1,
        inv_sublayers=1, sin_embedding=False, normalization_factor=1, aggregation_method="sum",
    ).to(device)
    b, n = cfg.batch, cfg.n_atoms
    gen = torch.Generator().manual_seed(seed)
    positions = 1.5 * torch.randn(b, n, 3, generator=gen)
    positions = positions - positions.mean(1, keepdim=True)
    types = torch.randint(0, n_types, (b, n), generator=gen)
    one_hot = nn.functional.one_hot(types, n_types).float() / 4.0  # EDM's normalize factor 4
    charges = torch.tensor([1.0, 6.0, 7.0, 8.0, 9.0][-n_types:])[types].unsqueeze(-1)  # EDM's factor 1
    xh = torch.cat([positions, one_hot, charges], dim=-1).to(device)
    node_mask = torch.ones(b, n, 1, device=device)
    edge_mask = (~torch.eye(n, dtype=torch.bool, device=device)).float().expand(b, n, n).reshape(b * n * n, 1)
    t = torch.rand(b, 1, generator=gen).to(device)
    target = torch.randn(b, n, xh.shape[-1], generator=gen).to(device)

    def reverse() -> torch.Tensor:
        with torch.no_grad():
            return model._forward(t, xh, node_mask, edge_mask, None)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model._forward(t, xh, node_mask, edge_mask, None), target)

    model.train()
    opt = _optimizer(model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    return {"reverse_step": reverse, "train_step": _train_step(model, loss, opt)}, n_params


# -- sampling and steering with the shipped prior --------------------------------------------------


def _timed(fn: Callable, box: dict) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            box["seconds"] += time.perf_counter() - start
    return wrapper


def steered_cost(k: int, steps: int, solver: str, precision: str, n: int, seed: int = 0) -> dict:
    """Seconds per output molecule of SMC with ``k`` particles over ``steps`` steps of ``solver`` for α = 70,
    the prior's matrix products in ``precision``, and the seconds of it the reward takes (its calls on x̂₀
    and on the finished particles; the reward runs in float32)."""
    from common.diffusion import SOLVERS
    from common.runtime import seed_everything
    from molctrl.conditions import PropertyConditions
    from molctrl.data.qm9 import load_split
    from molctrl.generate import atom_counts, target_tensors
    from molctrl.pipeline import DEFAULT_REWARD_MODEL, TARGET_TEMPERATURE
    from molctrl.steer import Steering, steer
    from molctrl.weights import load_prior, load_reward

    prior = load_prior().eval()
    reward = load_reward(prior, DEFAULT_REWARD_MODEL)
    set_precision(prior, precision)
    box = {"seconds": 0.0}
    reward.forward = _timed(reward.forward, box)  # an instance attribute: what nn.Module.__call__ runs
    reward.denoised_log_likelihood = _timed(reward.denoised_log_likelihood, box)
    conditions = PropertyConditions.from_split(load_split(prior.config.setting, "Db"))
    y, y_mask = target_tensors({"alpha": 70.0}, n)
    generator = seed_everything(seed)
    start = time.perf_counter()
    _, report = steer(prior, reward, y, y_mask, atom_counts(conditions, y, y_mask, generator=generator),
                      Steering(k, temperature=TARGET_TEMPERATURE), conditions, steps, generator,
                      solver=SOLVERS[solver])
    seconds = time.perf_counter() - start
    return {"particles": k, "sampling_steps": steps, "solver": solver, "precision": precision, "molecules": n,
            "seconds_per_molecule": round(seconds / n, 3), "reward_share": round(box["seconds"] / seconds, 3),
            "network_calls_per_molecule": report.network_calls, "mean_ess": round(float(report.ess.mean()), 2)}


def steered_spec(text: str) -> tuple[int, int, str, str]:
    """``"16:50:dpm2"`` -> ``(16, 50, "dpm2", "fp32")``, with a one-line error otherwise."""
    from benchmarks.prior_samples import sampler_row

    k, _, row = text.partition(":")
    if not k.isdigit() or int(k) < 1:
        raise click.BadParameter(f"{text!r}: expected K:STEPS:SOLVER[:PRECISION], K particles ≥ 1",
                                 param_hint="--steered")
    return (int(k), *sampler_row(row))


# -- the benchmark --------------------------------------------------------------------------------


def implementation(precision: str) -> str:
    """The record's name of our model at ``precision``: ``ours`` (fp32), ``ours_bf16``, ..."""
    return "ours" if precision == "fp32" else f"ours_{precision}"


def measure(cfg: BenchConfig, device: torch.device, repeats: int, edm_repo: str | Path | None = None,
            seed: int = 0, min_time: float = 0.2, warmup: int = 2, compile_denoiser: bool = False,
            precisions: tuple[str, ...] = ("fp32",), no_mmap: bool = False) -> dict:
    """Time ours at each precision (and EDM's when ``edm_repo`` is given) at one configuration, each
    workload in its own process (:class:`IsolatedWorkload`), interleaved; the JSON record of it, with the
    speed-up of each of ours over EDM."""
    builds = {implementation(p): partial(ours_workloads, cfg, device, seed, compile_denoiser, p) for p in precisions}
    if edm_repo is not None:
        builds["edm"] = partial(edm_workloads, cfg, device, str(edm_repo), seed)
    kinds = ("reverse_step", "train_step")
    workers: dict[str, IsolatedWorkload] = {}
    try:
        for impl, build in builds.items():
            for kind in kinds:
                workers[f"{impl}/{kind}"] = IsolatedWorkload(build, kind, device, torch.get_num_threads(), no_mmap)
        timings = time_interleaved({key: worker.seconds_per_call for key, worker in workers.items()}, repeats,
                                   warmup=warmup, min_time=min_time)
    finally:
        for worker in workers.values():
            worker.close()
    record: dict = {**asdict(cfg), "compiled": compile_denoiser, "processes": "one per workload"}
    for impl in builds:
        record[impl] = {"n_parameters": workers[f"{impl}/{kinds[0]}"].n_parameters}
        for kind in kinds:
            t = timings[f"{impl}/{kind}"]
            record[impl][kind] = {**_summary(t["ms"], cfg.batch), "calls_per_measurement": t["calls_per_measurement"],
                                  "first_call_ms": round(t["first_call_ms"], 1)}
    if "edm" in builds:
        for impl in (implementation(p) for p in precisions):
            record[f"speedup_{impl}_over_edm"] = {
                kind: round(record["edm"][kind]["ms"] / record[impl][kind]["ms"], 3) for kind in kinds}
            record[f"speedup_{impl}_over_edm_paired"] = {
                kind: _paired_speedup(timings[f"{impl}/{kind}"]["ms"], timings[f"edm/{kind}"]["ms"]) for kind in kinds}
    return record


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def metadata(device: torch.device, repeats: int, command: str) -> dict:
    """What the numbers were measured on, and how."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "repeats": repeats,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(REPO_ROOT),
        "command": command,
    }


def run_benchmark(configs: dict[str, BenchConfig], device: torch.device, repeats: int,
                  edm_repo: str | Path | None = None, command: str = "", min_time: float = 0.2, warmup: int = 2,
                  compile_denoiser: bool = False, edm_configs: tuple[str, ...] = EDM_CONFIGS,
                  precisions: tuple[str, ...] = ("fp32",), no_mmap: bool = False) -> dict:
    """The whole JSON record: every configuration, then metadata."""
    results = {
        name: measure(cfg, device, repeats, edm_repo if name in edm_configs else None,
                      min_time=min_time, warmup=warmup, compile_denoiser=compile_denoiser, precisions=precisions,
                      no_mmap=no_mmap)
        for name, cfg in configs.items()
    }
    meta = metadata(device, repeats, command)
    meta["min_time_s"] = min_time
    if edm_repo is not None:
        meta["edm_repo"] = edm_provenance(edm_repo)
        meta["edm_workload"] = EDM_WORKLOAD
    return {"configs": results, "metadata": meta}


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:K.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Measurements per quantity.")
@click.option("--edm-repo", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local checkout of EDM (ehoogeboom/e3_diffusion_for_molecules) to time against.")
@click.option("--config", "names", type=click.Choice(list(CONFIGS)), multiple=True,
              help="Only these configurations (default: all, or none with --row / --steered).")
@click.option("--min-time", type=float, default=0.2, show_default=True, help="Least seconds per measurement.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads (default: torch's choice).")
@click.option("--glibc-no-mmap", "no_mmap", is_flag=True,
              help="Keep large tensors on glibc's heap (no page faults per allocation); for ours and EDM alike.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile our EGNN's batch slices (dynamic shapes) first.")
@click.option("--precision", "precisions", type=click.Choice(list(PRECISIONS)), multiple=True,
              help="Time ours with the matrix products in each of these (default: fp32); interleaved with the rest.")
@click.option("--row", "rows", multiple=True, metavar="STEPS:SOLVER[:PRECISION]",
              help="Also sample --sampling-n molecules from the shipped prior with this sampler (e.g. 50:dpm2:bf16).")
@click.option("--sampling-n", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--steered", "steered", multiple=True, metavar="K:STEPS:SOLVER[:PRECISION]",
              help="Also time SMC with K particles per molecule over these steps, the prior's matrix products in "
                   "PRECISION (e.g. 16:50:dpm2:bf16).")
@click.option("--steered-n", type=click.IntRange(1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling and steered sections.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON to this file.")
def main(device: str, repeats: int, edm_repo: str | None, names: tuple[str, ...], min_time: float,
         threads: int | None, no_mmap: bool, compile_: bool, precisions: tuple[str, ...], rows: tuple[str, ...],
         sampling_n: int,
         steered: tuple[str, ...], steered_n: int, seed: int, out: str | None) -> None:
    """Time the configurations and print (and optionally write) one JSON record."""
    from benchmarks.prior_samples import sampler_row, score_samplers

    samplers = [sampler_row(text) for text in rows]
    steered_specs = [steered_spec(text) for text in steered]
    if threads is not None:
        torch.set_num_threads(threads)
    if no_mmap and not reuse_freed_memory():
        raise click.UsageError("--glibc-no-mmap needs glibc's mallopt")
    command = shlex.join(["python", "-m", "benchmarks.speed", *sys.argv[1:]])
    configs = {k: CONFIGS[k] for k in (names or ([] if samplers or steered_specs else CONFIGS))}
    record = run_benchmark(configs, resolve_device(device), repeats, edm_repo, command, min_time,
                           compile_denoiser=compile_, precisions=precisions or ("fp32",), no_mmap=no_mmap)
    record["metadata"]["glibc_no_mmap"] = no_mmap
    if samplers:
        from molctrl.weights import load_prior

        record["sampling"] = {"molecules": sampling_n, "seed": seed,
                              "rows": score_samplers(load_prior().eval(), samplers, sampling_n, seed)}
    if steered_specs:
        record["steered"] = [steered_cost(*spec, n=steered_n, seed=seed) for spec in steered_specs]
    emit(record, out)


if __name__ == "__main__":
    main()
