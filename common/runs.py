"""A training run's folder as both command lines drive it: the settings record ``run.json`` and the
loop that trains, checkpoints and resumes in it.

``run.json`` always says what the run trains towards. A new run records its settings; a resumed run
reads them back and changes only its length, and only when the command line gives one (``--steps``,
or ``--epochs`` for predictors): the record is then written anew, so that it never disagrees with the
checkpoint beside it.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click
import torch

from common.runtime import atomic_path
from common.training import MODEL, TrainConfig, Trainer, checkpoint_in


def run_record(run: Path, resume: bool, fresh: dict) -> dict:
    """The settings of a run: ``fresh`` for a new run, those of ``RUN/run.json`` on resume.

    Raises click.UsageError: resuming a folder without a readable record, or starting anew in a folder
    that holds a checkpoint.
    """
    path = run / "run.json"
    if resume:
        if not path.exists():
            raise click.UsageError(f"--resume: {path} does not exist (nothing to resume)")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise click.UsageError(f"--resume: {path} is not readable ({' '.join(str(err).split())})") from None
    if checkpoint_in(run):
        raise click.UsageError(f"{run} already holds a checkpoint: pass --resume or choose another --run-dir")
    return fresh


def train_config(record: dict, steps: int | None) -> TrainConfig:
    """The record's training settings, its length replaced by ``steps`` when given."""
    if steps is not None:
        record["train"]["steps"] = steps
    try:
        return TrainConfig(**record["train"])
    except ValueError as err:  # a resumed run.json edited by hand
        raise click.UsageError(f"run.json 'train': {err}") from None


def train_in_run(model: torch.nn.Module, batches, train_cfg: TrainConfig, run: Path, record: dict,
                 device: torch.device, resume: bool, data: str,
                 on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None) -> Trainer:
    """Train ``model`` to ``train_cfg.steps`` in ``run`` (from its checkpoint when ``resume``), with
    ``run.json`` written atomically before the first step; ``data`` says what it trains on, for the log."""
    trainer = Trainer(model, batches, train_cfg, run, device, on_checkpoint=on_checkpoint)
    if resume and trainer.resume():
        click.echo(f"resumed {run} at step {trainer.step} of {train_cfg.steps}", err=True)
    if trainer.group.is_main:
        run.mkdir(parents=True, exist_ok=True)
        record["train"] = asdict(train_cfg)
        record["world_size"] = trainer.group.world_size
        with atomic_path(run / "run.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        click.echo(f"training {n_params:,} parameters on {data}, {trainer.group.world_size} process(es) on "
                   f"{trainer.device}, {torch.get_num_threads()} thread(s)", err=True)
    if trainer.step >= train_cfg.steps:
        click.echo(f"nothing to do: the run is at step {trainer.step} of {train_cfg.steps} (train longer to go on)",
                   err=True)
    trainer.fit()
    if trainer.group.is_main:
        click.echo(f"done: {run / MODEL} (EMA weights) at step {trainer.step}", err=True)
    trainer.close()
    return trainer


def log_eval(path: Path, entry: dict) -> None:
    """Append one evaluation to the run's ``eval.jsonl`` and show it."""
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    click.echo(f"eval {json.dumps(entry)}", err=True)
