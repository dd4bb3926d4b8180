"""Speed of the shape denoiser candidates on this machine: seconds per training step and per reverse step.

    python -m benchmarks.shapes_speed [--threads K] [--repeats K] [--arch pvd --arch transformer ...] [--out FILE.json]

For each architecture (at ``shapectrl train prior``'s default size, and the ``pointnet`` reference at
6 × 256, the network that took 2.25 s per step) three workloads are timed:

* ``train_b32_n512`` and ``train_b32_n1024``: the prior's full training step (noise drawn, ε-loss
  forward, backward, AdamW with amsgrad as in the trainer) on 32 clouds of N points;
* ``reverse_b16_n2048``: one step of the ancestral sampler (denoiser under ``no_grad`` plus the
  Gaussian reverse step) on 16 clouds of 2,048 points.

With ``--slices`` it times instead the shipped default model's denoiser call of a guided sampling step
(32 clouds: 16 conditioned and 16 unconditioned) at 512 and 2,048 points, in float32 and bfloat16,
with the CPU batch cut into slices of 2,048 to 16,384 points or not at all
(``PointDenoiser.cpu_slice_points``; the default is :data:`shapectrl.denoisers.CPU_SLICE_POINTS`).

Inputs are random clouds of unit variance (the normalised frame). Workloads run round robin
(``benchmarks.speed.time_interleaved``) so background load falls on all alike; each figure is the
median over ``--repeats`` measurements, reported in seconds.
"""
from __future__ import annotations

import shlex
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict

import click
import torch

from benchmarks.record import emit
from benchmarks.speed import local_timers, metadata, time_interleaved
from common.runtime import resolve_device, set_precision
from shapectrl.denoisers import ARCHITECTURES
from shapectrl.prior import ShapeDiffusion, ShapePriorConfig

#: The sizes timed per architecture: the CLI's default (128 × 4) and the PointNet reference of 6 × 256.
SIZES = {"pvd": {"width": 128, "depth": 4}, "transformer": {"width": 128, "depth": 4},
         "pointnet": {"width": 256, "depth": 6}}
#: (name, batch, points) of each workload.
WORKLOADS = (("train_b32_n512", 32, 512), ("train_b32_n1024", 32, 1024), ("reverse_b16_n2048", 16, 2048))


def workloads(arch: str, device: torch.device, seed: int = 0,
              names: tuple[str, ...] = tuple(w[0] for w in WORKLOADS)) -> tuple[dict[str, Callable[[], object]], dict]:
    """The timed callables of one architecture and its configuration record."""
    torch.manual_seed(seed)
    config = ShapePriorConfig(arch=arch, **SIZES[arch])
    model = ShapeDiffusion(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True, weight_decay=1e-12)
    gen = torch.Generator().manual_seed(seed)
    fns: dict[str, Callable[[], object]] = {}
    for name, batch, n_points in WORKLOADS:
        if name not in names:
            continue
        points = torch.randn(batch, n_points, 3, generator=gen).to(device)
        if name.startswith("train"):
            def train_step(points=points) -> None:
                model.train()
                opt.zero_grad(set_to_none=True)
                model(points).backward()
                opt.step()
            fns[name] = train_step
        else:
            t = torch.full((batch,), model.diffusion.n_steps // 2, dtype=torch.long, device=device)

            def reverse_step(z=points, t=t) -> torch.Tensor:
                model.eval()
                with torch.no_grad():
                    eps = model.denoiser(z, t.float() / model.diffusion.n_steps)
                    mean, std = model.diffusion.reverse_step(z, eps, t, t - 20)
                    return mean + std * torch.randn_like(mean)
            fns[name] = reverse_step
    n_params = sum(p.numel() for p in model.parameters())
    return fns, {"config": asdict(config), "n_parameters": n_params}


def slice_workloads(batch: int = 32, points: tuple[int, ...] = (512, 2048), precisions: tuple[str, ...] = ("fp32", "bf16"),
                    slices: tuple[int | None, ...] = (2048, 4096, 8192, 16384, None), seed: int = 0,
                    ) -> dict[str, Callable[[], object]]:
    """Timed denoiser calls of the shipped default model, ``"{precision}/n{N}/slice{P}"`` (``whole``: unsliced)."""
    from shapectrl.control import ControlledShapes
    from shapectrl.weights import DEFAULT_MODELS, weight_path

    model = ControlledShapes.load(weight_path(DEFAULT_MODELS["rgdm"])).model.eval()
    gen = torch.Generator().manual_seed(seed)
    t, cond = torch.full((batch,), 0.5), torch.zeros(batch, model.denoiser.cond_dim)
    fns: dict[str, Callable[[], object]] = {}
    for precision in precisions:
        for n in points:
            z = torch.randn(batch, n, 3, generator=gen)
            for size in slices:
                def call(z=z, precision=precision, size=size) -> torch.Tensor:
                    set_precision(model, precision)
                    model.denoiser.cpu_slice_points = size or batch * z.shape[1]
                    with torch.no_grad():
                        return model.denoiser(z, t, cond=cond)
                fns[f"{precision}/n{n}/slice{size or 'whole'}"] = call
    return fns


def run_slices(repeats: int, min_time: float, warmup: int, command: str) -> dict:
    device = torch.device("cpu")
    timings = time_interleaved(local_timers(slice_workloads(), device), repeats, warmup=warmup, min_time=min_time)
    results = {key: {"s": round(statistics.median(t["ms"]) / 1000.0, 4), "s_all": [round(v / 1000.0, 4) for v in t["ms"]]}
               for key, t in timings.items()}
    return {"denoiser_call_b32": results, "metadata": metadata(device, repeats, command) | {"min_time_s": min_time}}


def run_benchmark(archs: tuple[str, ...], device: torch.device, repeats: int, min_time: float, warmup: int,
                  command: str) -> dict:
    fns: dict[str, Callable[[], object]] = {}
    results: dict[str, dict] = {}
    for arch in archs:
        arch_fns, info = workloads(arch, device)
        results[arch] = info
        fns.update({f"{arch}/{name}": fn for name, fn in arch_fns.items()})
    timings = time_interleaved(local_timers(fns, device), repeats, warmup=warmup, min_time=min_time)
    for key, t in timings.items():
        arch, name = key.split("/")
        batch = next(b for n, b, _ in WORKLOADS if n == name)
        seconds = statistics.median(t["ms"]) / 1000.0
        results[arch][name] = {"s": round(seconds, 4), "clouds_per_s": round(batch / seconds, 2),
                               "s_all": [round(v / 1000.0, 4) for v in t["ms"]],
                               "calls_per_measurement": t["calls_per_measurement"]}
    meta = metadata(device, repeats, command) | {"min_time_s": min_time, "warmup_calls": warmup}
    return {"architectures": results, "metadata": meta}


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--arch", "archs", type=click.Choice(ARCHITECTURES), multiple=True,
              help="Architectures to time (repeatable; default: all).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:K or auto.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch intra-op threads (default: torch's choice).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Measurements per workload.")
@click.option("--min-time", type=float, default=0.0, show_default=True,
              help="Least seconds per measurement (more calls are averaged below it).")
@click.option("--warmup", type=click.IntRange(1), default=1, show_default=True, help="Untimed calls per workload first.")
@click.option("--slices", is_flag=True, help="Time the shipped model's denoiser by CPU slice size and precision instead.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON to this file.")
def main(archs: tuple[str, ...], device: str, threads: int | None, repeats: int, min_time: float, warmup: int,
         slices: bool, out: str | None) -> None:
    """Time the denoiser candidates and print (and optionally write) one JSON record."""
    if threads is not None:
        torch.set_num_threads(threads)
    command = shlex.join(["python", "-m", "benchmarks.shapes_speed", *sys.argv[1:]])
    if slices:
        emit(run_slices(repeats, min_time, warmup, command), out)
        return
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as err:
        raise click.BadParameter(str(err), param_hint="--device") from None
    emit(run_benchmark(archs or ARCHITECTURES, dev, repeats, min_time, warmup, command), out)


if __name__ == "__main__":
    main()
