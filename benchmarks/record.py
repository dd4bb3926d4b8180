"""What every benchmark writes beside its numbers: the machine, and the record itself (atomically)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import torch

from common.runtime import atomic_open


def device_name(device: torch.device | None = None) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def guided_row(name: str, guidance_scale: float, window: tuple[int, int] | None = None) -> str:
    """A method's row name, with its classifier-free guidance scale when that is not 1 (and the steps
    lo < t ≤ hi it guides, when ``window`` limits them)."""
    if guidance_scale == 1.0:
        return name
    return f"{name}, guidance {guidance_scale:g}" + ("" if window is None else f" on {window[0]} < t ≤ {window[1]}")


def smc_spec_fields(spec: str) -> tuple[str, str, str, list[str]]:
    """The fields of an ``--smc K:PROPOSAL[:TAU[:FLAG...]]`` row as text: K, PROPOSAL (``prior`` when left
    out), TAU (``1`` when left out) and the flags after them; each benchmark checks them."""
    parts = spec.split(":")
    k, proposal, tau = (parts + ["prior", "1"][len(parts) - 1:])[:3]
    return k, proposal, tau, parts[3:]


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command line that ran ``python -m module`` with ``argv`` (default: this process's arguments),
    quoted for a shell so that it reruns as it ran (an empty ``--references ""`` stays an argument)."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)


def machine_info() -> dict[str, str | int | None]:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": device_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": version("numpy"),
        "rdkit": version("rdkit"),
    }


def emit(record: dict, out: str | None, indent: int = 2) -> None:
    """Print the record as JSON and, with ``out``, write the same text there atomically."""
    text = json.dumps(record, indent=indent)
    print(text)
    if out:
        with atomic_open(out) as handle:
            handle.write(text + "\n")
