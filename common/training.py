"""A small training loop shared by every model: AdamW, EMA, adaptive gradient clipping, atomic
checkpoints, exact resume, progress, and PyTorch DDP under ``torchrun``.

The model is any ``nn.Module`` whose ``forward(*batch)`` returns a scalar loss and which has
``export() -> dict`` (what a shipped weights file holds); a ``parameter_groups()`` method, if it has one,
gives optimiser groups whose ``lr_scale`` multiplies the scheduled learning rate; a ``stats`` dict
attribute, if it has one, is shown with the progress (e.g. reward, KL), and so is the batch source's
(e.g. the effective sample size of pay-off resampling). Batches come from a :class:`BatchSource`, a
deterministic function of the step number, so a resumed run sees exactly the data it would have seen.
"""
from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from common.exports import restore
from common.runtime import ProcessGroup, command_line, set_precision
from common.weights import SUFFIX, WeightsError, read_tree, save_tree

CHECKPOINT, MODEL = f"checkpoint{SUFFIX}", f"model{SUFFIX}"
LEGACY_CHECKPOINT = "checkpoint.pt"  # the pickle format of earlier versions, read safely (common.weights)


def checkpoint_in(run_dir: str | Path) -> Path | None:
    """The checkpoint a run folder holds (``checkpoint.safetensors``, or an older ``checkpoint.pt``), if any."""
    for name in (CHECKPOINT, LEGACY_CHECKPOINT):
        if (Path(run_dir) / name).exists():
            return Path(run_dir) / name
    return None


def condition_parameter_groups(model: nn.Module, cond: nn.Parameter | None, cond_lr_scale: float = 1.0,
                               backbone: bool = True) -> list[dict]:
    """Optimiser groups for a conditioned copy of a prior: the condition embedding ``cond`` learns at
    ``cond_lr_scale`` times the learning rate of the rest (it starts at zero and carries the whole
    condition at first); ``backbone=False`` trains ``cond`` alone."""
    if cond is None:
        return [{"params": list(model.parameters())}]
    rest = [p for p in model.parameters() if p is not cond]
    return ([{"params": rest}] if backbone else []) + [{"params": [cond], "lr_scale": cond_lr_scale}]


class BatchSource(Protocol):
    def __call__(self, step: int, rank: int, world_size: int) -> Sequence[torch.Tensor]:
        """The batch (a tuple of tensors) that process ``rank`` trains on at ``step``."""


_STREAMS = {"targets": (1_000_003, 17, 0), "payoff": (7_919, 31, 1)}


def step_generator(seed: int, step: int, rank: int = 0, stream: str = "targets") -> torch.Generator:
    """A CPU generator that depends on ``(seed, step, rank)`` only, for the random draws of a batch (a
    resumed run repeats them); ``stream`` keeps independent draws of one step apart: "targets" (which
    targets and which of their columns are conditioned) or "payoff" (which pool samples are picked)."""
    a, b, c = _STREAMS[stream]
    return torch.Generator().manual_seed(seed * a + step * b + rank + c)


class EpochSampler:
    """Indices of a data set in shuffled epochs, as a pure function of the step.

    Global batch ``b·world_size`` per step; epoch ``e`` uses ``RandomState(seed + e).permutation``.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int = 0):
        if n_items < 1:
            raise ValueError("cannot train on an empty data set")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        per_step = self.batch_size * world_size
        start = step * per_step + rank * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.n_items)
            perm = np.random.RandomState(self.seed + epoch).permutation(self.n_items)
            out.extend(perm[offset : offset + self.batch_size - len(out)])
        return np.asarray(out)


class AdaptiveGradClip:
    """Clip the gradient norm at 1.5·mean + 2·std of the last 50 norms (EDM's stabilisation)."""

    def __init__(self, history: int = 50, initial: float = 3000.0):
        self.norms: deque[float] = deque([initial], maxlen=history)

    def __call__(self, params) -> float:
        norms = np.asarray(self.norms)
        limit = 1.5 * norms.mean() + 2 * norms.std()
        norm = float(nn.utils.clip_grad_norm_(params, max_norm=limit))
        self.norms.append(min(norm, limit))
        return norm


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 64
    lr: float = 1e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine": lr·(1 + cos(π·step/steps))/2 after the warm-up
    ema_decay: float = 0.999
    weight_decay: float = 1e-12
    checkpoint_every: int = 500
    log_every: int = 100
    seed: int = 0
    compile: bool = False  # the caller torch.compiles its hot network in place (same state_dict keys)
    precision: str = "fp32"  # of the network's matrix products while training (common.runtime.set_precision)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:  # a run.json edited by hand must not fall back to constant
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r} (expected one of {', '.join(LR_SCHEDULES)})")


class Progress:
    """Steps, loss, rate and time left: a tqdm bar on a terminal, plain lines in a log file."""

    def __init__(self, total: int, start: int, enabled: bool, log_every: int):
        self.total, self.start, self.log_every = total, start, log_every
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.sums: dict[str, float] = {}
        self.count = 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, stats: dict[str, float] | None = None) -> None:
        """Record one step; ``stats`` (e.g. reward, KL, ESS) are averaged over the lines' interval."""
        if not self.enabled:
            return
        for name, value in (stats or {}).items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.4g}" for k, v in (stats or {}).items()}, refresh=False)
        elif step % self.log_every == 0 or step == self.total:
            done = step - self.start
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            left = (self.total - step) / max(rate, 1e-9)
            h, rem = divmod(int(left), 3600)
            means = "".join(f"  {k} {v / self.count:.4g}" for k, v in self.sums.items())
            print(f"step {step}/{self.total}  loss {loss:.4f}{means}  {rate:.2f} step/s  left {h}:{rem // 60:02d}:{rem % 60:02d}",
                  file=sys.stderr, flush=True)
            self.sums, self.count = {}, 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Trains ``model`` on ``batches`` and keeps ``run_dir/checkpoint.safetensors`` (everything needed to
    resume) and ``run_dir/model.safetensors`` (the EMA weights as ``model.export()``, with the command,
    steps and training time), both written atomically as safetensors (:mod:`common.weights`).

    Args:
        model: module with ``forward(*batch) -> loss`` and ``export() -> dict``.
        batches: deterministic batch source. config: optimisation settings.
        run_dir: output folder. device: where to train. on_checkpoint: called with (step, ema model)
            on the main process just before each checkpoint is written (e.g. to evaluate samples, or
            to set a calibration on the EMA model that ``export()`` then saves with it).
    """

    def __init__(self, model: nn.Module, batches: BatchSource, config: TrainConfig, run_dir: str | Path,
                 device: torch.device, on_checkpoint: Callable[[int, nn.Module], None] | None = None):
        self.group = ProcessGroup(device)
        if device.type == "cuda" and self.group.distributed:
            device = torch.device("cuda", self.group.local_rank)
        self.device, self.config, self.batches = device, config, batches
        self.run_dir = Path(run_dir)
        self.model = set_precision(model.to(device), config.precision)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        groups = model.parameter_groups() if hasattr(model, "parameter_groups") else model.parameters()
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, amsgrad=True, weight_decay=config.weight_decay)
        self.clip = AdaptiveGradClip()
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self._since = time.perf_counter()
        self.on_checkpoint = on_checkpoint
        self.train_model = (DistributedDataParallel(self.model) if self.group.distributed else self.model)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _lr(self, step: int) -> float:
        cfg = self.config
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        if cfg.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(step / cfg.steps, 1.0)))
        return lr

    def save(self) -> None:
        now = time.perf_counter()
        self.elapsed, self._since = self.elapsed + now - self._since, now
        if not self.group.is_main:
            return
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_norms": list(self.clip.norms),
            "train_config": asdict(self.config),
            "torch_rng": torch.get_rng_state(),
        }
        save_tree(state, self.checkpoint_path)
        record = {"step": self.step, "train_seconds": round(self.elapsed, 1), "world_size": self.group.world_size,
                  "command": command_line()}
        save_tree(self.ema.module.export() | record, self.run_dir / MODEL)

    def resume(self) -> bool:
        """Load the run's checkpoint if there is one (:func:`checkpoint_in`); returns whether it did.

        Raises:
            WeightsError: the checkpoint is unreadable or belongs to another model or optimiser.
        """
        path = checkpoint_in(self.run_dir)
        if path is None:
            return False
        state = read_tree(path, map_location=self.device)
        try:
            restore(self.model, state["model"])
            restore(self.ema, state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            norms, rng = state["grad_norms"], state["torch_rng"]
            torch.set_rng_state(rng.cpu())
            self.step, self.elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
            what = f"missing field {err}" if isinstance(err, KeyError) else " ".join(str(err).split())[:160]
            raise WeightsError(f"{path}: not a checkpoint of this run ({what})") from None
        self.clip.norms.extend(norms)
        return True

    def close(self) -> None:
        """End the process group after every rank has finished: DDP's reducer holds the group, so it goes
        first (left to garbage collection after the group's end, gloo's destructor could wait for ever on
        a peer that had exited)."""
        self.group.barrier()
        self.train_model = self.model
        self.group.close()

    def fit(self) -> nn.Module:
        """Train until ``config.steps``; returns the EMA model."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.group.distributed:  # decorrelate the diffusion noise of the ranks
            torch.manual_seed(cfg.seed * 1000 + self.step * 7 + self.group.rank)
        progress = Progress(cfg.steps, self.step, self.group.is_main, cfg.log_every)
        self._since = time.perf_counter()
        self.model.train()
        try:
            while self.step < cfg.steps:
                batch = [b.to(self.device) for b in self.batches(self.step, self.group.rank, self.group.world_size)]
                for g in self.optimizer.param_groups:
                    g["lr"] = self._lr(self.step) * g.get("lr_scale", 1.0)
                loss = self.train_model(*batch)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss became {loss.item()} at step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.clip(self.model.parameters())
                self.optimizer.step()
                self.ema.update_parameters(self.model)
                self.step += 1
                stats = getattr(self.batches, "stats", {}) | getattr(self.model, "stats", {})
                progress.update(self.step, loss.item(), stats or None)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    if self.on_checkpoint and self.group.is_main:
                        self.on_checkpoint(self.step, self.ema.module)
                    self.save()
                    self.group.barrier()
        finally:
            progress.close()
        return self.ema.module
