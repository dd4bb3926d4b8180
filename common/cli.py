"""What both command lines share: the ``--device`` value, one error line for an unusable weights file,
and ``weights show`` / ``weights convert``, the model card and the converter from the older pickle format."""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click
import torch

from common.diffusion import SOLVERS
from common.exports import class_of, errors_naming, from_tree
from common.guidance import parse_window
from common.runtime import PRECISION_CHOICES, resolve_device, reuse_freed_memory
from common.weights import (
    FORMAT,
    SUFFIX,
    WeightsError,
    file_format,
    read_tree,
    record_path,
    recorded_sha256,
    save_tree,
    sha256,
)

RECORD_SECTIONS = re.compile(r"^## (Command|Metrics).*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
TRAINING_FIELDS = ("step", "train_seconds", "world_size", "command")


def device_option(name: str) -> torch.device:
    """The torch device of a ``--device`` value (auto, cpu, cuda, cuda:K), or a usage error naming it."""
    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as err:
        raise click.BadParameter(str(err), param_hint="--device") from None


def compute_options(command):
    """``--device`` and ``--threads``, the same on every command that computes."""
    command = click.option("--threads", type=click.IntRange(1), default=None,
                           help="CPU threads for torch (default: torch's choice; give each of two jobs on two "
                                "cores one).")(command)
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when present), cpu, cuda or cuda:K.")(command)


def solver_option(default: str):
    """``--solver``: the reverse chain's grid and order (:data:`common.diffusion.SOLVERS`)."""
    return click.option("--solver", type=click.Choice(list(SOLVERS)), default=default, show_default=True,
                        help="How the reverse steps are taken: ancestral (DDPM's first-order steps, uniform in t) or "
                             "dpm2 (second-order stochastic steps on a grid even in log-SNR; docs/sampling.md).")


def window_option(ctx: click.Context, param: click.Parameter, text: str | None) -> tuple[int, int] | None:
    """Click callback of a ``LO:HI`` window of diffusion steps: :func:`common.guidance.parse_window`, or a
    usage error naming the option."""
    try:
        return None if text is None else parse_window(text)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def precision_option(default: str = "auto"):
    """``--precision``: the denoiser's matrix products in float32 or bfloat16, or ``auto``
    (:func:`common.runtime.resolve_precision`, :func:`common.runtime.set_precision`)."""
    return click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=default, show_default=True,
                        help="The denoiser's matrix products: fp32, bf16 (the coordinates stay float32), "
                             "or auto: bf16 where the CPU or GPU has bfloat16 units, fp32 elsewhere (docs/sampling.md).")


def compute_device(device: str, threads: int | None) -> torch.device:
    """Set torch's CPU threads (when given), keep freed memory for reuse when the work runs on the CPU
    (:func:`common.runtime.reuse_freed_memory`) and return the ``--device``'s torch device."""
    if threads:
        torch.set_num_threads(threads)
    dev = device_option(device)
    if dev.type == "cpu":
        reuse_freed_memory()
    return dev


def comma_names(text: str, allowed: Sequence[str], option: str, what: str, empty: bool = False) -> tuple[str, ...]:
    """The comma-separated names an option gives, each one of ``allowed``, without repeats; a usage error
    naming the first unknown one (or none given, unless ``empty``)."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in allowed]
    if unknown or not (names or empty):
        raise click.BadParameter(f"unknown {what} {unknown[0]!r}" if unknown else f"no {what} given",
                                 param_hint=f"{option} (expected some of {','.join(allowed)})")
    return names


@contextmanager
def usage_errors() -> Iterator[None]:
    """A ``ValueError`` of the Python API inside becomes a usage error (one line, exit status 2); an
    unusable weights file stays :class:`~common.weights.WeightsError` (``Error: PATH: ...``)."""
    try:
        yield
    except WeightsError:
        raise
    except ValueError as err:
        raise click.UsageError(str(err)) from None


class WeightsFileError(click.ClickException):
    """Click's form of :class:`~common.weights.WeightsError`: ``Error: PATH: what is wrong``, exit status 2."""

    exit_code = 2


class Commands(click.Group):
    """A command group whose subcommands report an unusable weights file as one error line (exit status 2)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WeightsError as err:
            raise WeightsFileError(str(err)) from None


def _text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def checked_tree(path: Path, classes: Sequence[type]) -> dict:
    """The tree in ``path``, checked against the class in ``classes`` whose ``kind`` it names; a tree
    without a kind (a training checkpoint) is taken as it is."""
    tree = read_tree(path)
    cls = class_of(path, tree, classes, required=False)
    if cls is not None:
        with errors_naming(path):
            from_tree(cls, tree)
    return tree


def model_card(path: Path, classes: Sequence[type]) -> list[str]:
    """The lines of ``weights show``: the file, what it holds, how it was trained, and its record."""
    tree = checked_tree(path, classes)
    kind = tree.get("kind")
    state = tree.get("state_dict") if isinstance(tree.get("state_dict"), dict) else {}
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
    expected = recorded_sha256(path)
    digest = sha256(path)
    lines = [f"file        {path} ({path.stat().st_size / 1e6:.1f} MB, "
             + (f"safetensors, {FORMAT})" if file_format(path) == "safetensors" else
                "older pickle format: convert it with 'weights convert')"),
             f"sha256      {digest}" + ("" if expected is None else f" (matches {record_path(path).name})"),
             f"kind        {kind if kind is not None else '- (a checkpoint or other tree: ' + ', '.join(tree) + ')'}"]
    if kind is not None:
        lines.append(f"check       a valid {kind} file: every field typed, tensor names and shapes as the config says")
    config = tree.get("config", {})
    if isinstance(config, dict) and "setting" in config:
        lines.append(f"setting     {config['setting']}")
    if tensors:
        lines.append(f"network     {sum(t.numel() for t in tensors):,} numbers in {len(tensors)} tensors; {_text(config)}")
    for key, value in tree.items():
        if key not in ("kind", "config", "state_dict", *TRAINING_FIELDS) and not isinstance(value, torch.Tensor):
            lines.append(f"{key:<11s} {_text(value)}")
    trained = {k: tree[k] for k in TRAINING_FIELDS if k in tree}
    if trained:
        lines.append(f"training    {_text(trained)}")
    record = record_path(path)
    if record.is_file():
        lines += ["", f"From the record {record}:", ""]
        lines += [m.group(0).strip() + "\n" for m in RECORD_SECTIONS.finditer(record.read_text(encoding="utf-8"))]
    return lines


def weights_group(program: str, classes: Sequence[type]) -> click.Group:
    """The ``weights`` command group of ``program`` (``molctrl`` or ``shapectrl``), whose files hold the
    ``classes`` (models, and pools of scored samples)."""

    @click.group(name="weights", help=f"Inspect and convert weights files ({SUFFIX}: tensors and JSON metadata, "
                                      "never code).")
    def weights() -> None:
        pass

    @weights.command()
    @click.argument("path", type=click.Path(path_type=Path))
    def show(path: Path) -> None:
        """Print the model card of PATH: kind, setting, network, conditions, how it was trained, its
        SHA-256 (checked against its record when it has one) and the record's command and metrics."""
        click.echo("\n".join(model_card(path, classes)))

    @weights.command()
    @click.argument("old", type=click.Path(path_type=Path))
    @click.argument("new", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--force", is_flag=True, help="Replace NEW if it exists.")
    def convert(old: Path, new: Path, force: bool) -> None:
        """Rewrite OLD (a model, checkpoint or pool of the older .pt format, read without running any of its
        code) as NEW in safetensors; a model is checked against its config first, a checkpoint resumes bit for bit."""
        if new.suffix != SUFFIX:
            raise click.BadParameter(f"{new}: expected a {SUFFIX} file name", param_hint="NEW")
        if new.exists() and not force:
            raise click.BadParameter(f"{new} exists (pass --force to replace it)", param_hint="NEW")
        tree = checked_tree(old, classes)
        save_tree(tree, new)
        click.echo(f"{new}: {tree.get('kind', 'tree')} in {SUFFIX} (sha256 {sha256(new)}); "
                   f"'{program} weights show {new}' prints its card")

    return weights
