"""Device choice, seeding, process groups and atomic file writes: the plumbing every CLI shares."""
from __future__ import annotations

import ctypes
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return device


def reuse_freed_memory() -> bool:
    """Serve every later allocation from glibc's heap and keep freed memory there for reuse (``mallopt``:
    no mmap, no trimming; what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1`` do). Returns whether glibc
    accepted both settings (False on other C libraries, where nothing changes).

    glibc maps each block over its mmap threshold afresh and unmaps it on free, so every large
    intermediate tensor is page-faulted and zeroed by the kernel on first touch; the threshold also
    moves with what was freed before, so the same step runs at different speeds in different processes.
    Our reverse step took 46 ms this way against 69 ms by default at the shipped prior's size, and 1.64
    against 1.78 s at EDM's; EDM's own 3.70 against 6.14 s (``benchmarks.speed --glibc-no-mmap``,
    docs/molecules.md). The cost: the process keeps its peak memory until it exits, so the CLIs call it
    (:func:`common.cli.compute_device`) and the Python API leaves the choice to its caller.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))


#: Training steps from which ``torch.compile`` pays for its first call: on this CPU 20 s once with inductor's
#: cache warm (more when it is empty), then 18 ms (12 %) less per step at the shipped prior's size
#: (docs/molecules.md), even after ~1,100 steps; the margin covers an empty cache.
COMPILE_FROM_STEPS = 5_000


def cpu_compiler_present() -> bool:
    """Whether inductor can build CPU kernels here: a C++ compiler on the ``PATH`` (``$CXX``, g++, c++, clang++)."""
    return any(shutil.which(cc) for cc in (os.environ.get("CXX", "g++"), "c++", "clang++"))


def resolve_compile(choice: bool | None, steps: int, device: torch.device) -> bool:
    """``--compile`` / ``--no-compile`` as given; unset (``None``): compile runs of at least
    :data:`COMPILE_FROM_STEPS` steps where inductor has a backend (CUDA, or :func:`cpu_compiler_present`)."""
    if choice is not None:
        return choice
    return steps >= COMPILE_FROM_STEPS and (device.type == "cuda" or cpu_compiler_present())


#: Names of the precisions of the matrix products (``--precision``).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


#: What ``--precision`` accepts: a :data:`PRECISIONS` name, or ``auto`` (:func:`resolve_precision`).
PRECISION_CHOICES = (*PRECISIONS, "auto")


def precision_named(name: str) -> torch.dtype:
    """The :data:`PRECISIONS` entry ``name``, with a one-line error for any other name."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (expected one of {', '.join(PRECISIONS)})")
    return PRECISIONS[name]


def check_precision_choice(name: str) -> None:
    """One-line error unless ``name`` is one of :data:`PRECISION_CHOICES`."""
    if name not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {name!r} (expected one of {', '.join(PRECISION_CHOICES)})")


def native_bfloat16(device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether ``device`` has bfloat16 arithmetic: a CUDA GPU that supports it, or a CPU whose flags (Linux's
    ``cpuinfo``) list ``avx512_bf16`` or ``amx_bf16``; False where they cannot be read."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bfloat16` (``device``), else ``fp32``; a :data:`PRECISIONS`
    name as it is (one-line error for any other)."""
    check_precision_choice(name)
    if name == "auto":
        return "bf16" if native_bfloat16(device) else "fp32"
    return name


def set_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Run the matrix products of every submodule with a ``compute_dtype`` in ``precision`` (a key of
    :data:`PRECISIONS`); parameters stay float32. Returns ``model``.

    Raises:
        ValueError: an unknown name, or a lower precision for a model without a lower-precision path.
    """
    dtype = precision_named(precision)
    modules = [module for module in model.modules() if hasattr(module, "compute_dtype")]
    if not modules and dtype != torch.float32:
        raise ValueError(f"precision {precision}: {type(model).__name__} has no lower-precision path (fp32 only)")
    for module in modules:
        module.compute_dtype = dtype
    return model


def in_batch_slices(fn, tensors: tuple[torch.Tensor | None, ...], size: int):
    """``fn(*tensors)`` over slices of at most ``size`` items along the first dimension (None entries are
    passed as they are); the outputs, a tensor or a tuple of tensors, are concatenated. For networks whose
    batch items are independent: on the CPU, large fresh activations cost a page fault per page on every
    call, so slices that stay small run faster and compute the same."""
    b = next(t for t in tensors if t is not None).shape[0]
    if size >= b:
        return fn(*tensors)
    parts = [fn(*(None if t is None else t[i : i + size] for t in tensors)) for i in range(0, b, size)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _new_file_mode(path: Path) -> int:
    """The mode of the file being replaced, or what ``open`` would give a new one under the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block completes it replaces ``path`` in one
    rename. An exception (or a kill) leaves ``path`` as it was; the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """A text handle (UTF-8, ``\n`` line ends) whose content replaces ``path`` only if the block completes."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def read_bytes(path: Path, error: type[Exception], expected: str) -> bytes:
    """The bytes of the file ``path``, or ``error`` in one line saying why not (missing, a folder, unreadable)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory (expected {expected})") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror})") from None


def command_line() -> str:
    """This process's command line as a user would type it (``molctrl finetune ...``), for records."""
    program = Path(sys.argv[0])
    name = program.parent.parent.name if program.name == "__main__.py" else program.name  # python -m PKG.cli
    return shlex.join([name, *sys.argv[1:]])


class ProcessGroup:
    """Rank and world size, from ``torchrun``'s environment when present (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, device: torch.device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
