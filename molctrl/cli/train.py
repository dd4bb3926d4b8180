"""``molctrl train``: train models with checkpoints, resume, progress and DDP (``torchrun``)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click
import torch

from common.runtime import atomic_path, resolve_device, seed_everything
from common.training import TrainConfig, Trainer
from molctrl.batches import MoleculeBatches
from molctrl.data.qm9 import SETTINGS, SPLITS, load_split
from molctrl.prior import MoleculeDiffusion, PriorConfig


@click.group()
def train() -> None:
    """Train a model (single process, or several under torchrun)."""


def _sample_metrics(model: MoleculeDiffusion, n: int, steps: int, seed: int) -> dict:
    from molctrl.metrics import evaluate_molecules, train_smiles

    model.eval()
    molecules = model.sample(n, steps, torch.Generator().manual_seed(seed))
    return evaluate_molecules(molecules, train_smiles(model.config.setting)).summary


@train.command()
@click.option("--setting", type=click.Choice(list(SETTINGS)), default="qm9-noh", show_default=True)
@click.option("--split", type=click.Choice(list(SPLITS)), default="train", show_default=True,
              help="Training molecules (labels are never used).")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True,
              help="Folder for checkpoint.pt, model.pt (EMA weights), run.json and eval.jsonl.")
@click.option("--steps", type=int, default=20_000, show_default=True, help="Total optimisation steps.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Molecules per step and process.")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--warmup", type=int, default=0, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--ema", "ema_decay", type=float, default=0.999, show_default=True)
@click.option("--hidden", type=int, default=128, show_default=True, help="EGNN width (EDM: 256).")
@click.option("--layers", type=int, default=6, show_default=True, help="EGNN layers (EDM: 9).")
@click.option("--diffusion-steps", type=int, default=1000, show_default=True, help="T of the noise schedule.")
@click.option("--schedule", type=click.Choice(["polynomial_2", "cosine", "linear"]), default="polynomial_2",
              show_default=True)
@click.option("--checkpoint-every", type=int, default=500, show_default=True)
@click.option("--eval-every", type=int, default=0, show_default=True,
              help="Sample and score molecules every this many steps (0: never); appended to eval.jsonl.")
@click.option("--eval-samples", type=int, default=200, show_default=True)
@click.option("--eval-steps", type=int, default=100, show_default=True, help="Sampling steps for evaluation.")
@click.option("--limit", type=int, default=None, help="Train on the first LIMIT molecules only (smoke tests).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:K.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network (~1 min once, then ~1.3x faster).")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoint.pt with its run.json settings "
              "(only --steps may change, to train longer).")
def prior(setting, split, run_dir, steps, batch_size, lr, warmup, ema_decay, hidden, layers, diffusion_steps,
          schedule, checkpoint_every, eval_every, eval_samples, eval_steps, limit, seed, device, threads, compile_, resume) -> None:
    """Train the unconditional molecule prior (EGNN + E(3)-invariant diffusion)."""
    if threads:
        torch.set_num_threads(threads)
    run = Path(run_dir)
    record = run / "run.json"
    if resume:
        if not record.exists():
            raise click.UsageError(f"--resume: {record} does not exist (nothing to resume)")
        saved = json.loads(record.read_text())
        model_cfg = PriorConfig(**saved["model"])
        train_cfg = TrainConfig(**(saved["train"] | {"steps": steps}))
        split, limit = saved["data"]["split"], saved["data"]["limit"]
        eval_every, eval_samples, eval_steps = (saved["eval"][k] for k in ("every", "samples", "steps"))
    else:
        if (run / "checkpoint.pt").exists():
            raise click.UsageError(f"{run} already holds a checkpoint: pass --resume or choose another --run-dir")
        model_cfg = PriorConfig(setting=setting, hidden=hidden, n_layers=layers, n_steps=diffusion_steps,
                                schedule=schedule)
        train_cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                                ema_decay=ema_decay, checkpoint_every=checkpoint_every, seed=seed,
                                compile=compile_)
    seed_everything(train_cfg.seed)
    data = load_split(model_cfg.setting, split)
    if limit:
        data = data.subset(slice(limit))
    model = MoleculeDiffusion(model_cfg, data.n_atoms_histogram())
    if train_cfg.compile:
        model.denoiser.compile(dynamic=True)
    eval_log = run / "eval.jsonl"

    def evaluate(step: int, ema_model: MoleculeDiffusion) -> None:
        if eval_every and step % eval_every == 0:
            t0 = time.perf_counter()
            try:
                metrics = _sample_metrics(ema_model, eval_samples, eval_steps, seed=step)
            except Exception as err:  # an evaluation must never kill a long training run
                click.echo(f"eval at step {step} failed: {err!r}", err=True)
                return
            entry = {"step": step, "samples": eval_samples, "sampling_steps": eval_steps, **metrics,
                     "seconds": round(time.perf_counter() - t0, 1)}
            with open(eval_log, "a") as f:
                f.write(json.dumps(entry) + "\n")
            click.echo(f"eval {json.dumps(entry)}", err=True)
            ema_model.train()

    trainer = Trainer(model, MoleculeBatches(data, train_cfg.batch_size, train_cfg.seed), train_cfg, run,
                      resolve_device(device), on_checkpoint=evaluate)
    if resume and trainer.resume():
        click.echo(f"resumed {run} at step {trainer.step}", err=True)
    elif trainer.group.is_main:
        run.mkdir(parents=True, exist_ok=True)
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"model": asdict(model_cfg), "train": asdict(train_cfg),
                                       "data": {"split": split, "limit": limit, "molecules": len(data)},
                                       "eval": {"every": eval_every, "samples": eval_samples, "steps": eval_steps},
                                       "world_size": trainer.group.world_size}, indent=1))
    n_params = sum(p.numel() for p in model.parameters())
    if trainer.group.is_main:
        click.echo(f"training {n_params:,} parameters on {len(data)} molecules of {model_cfg.setting}/{split}, "
                   f"{trainer.group.world_size} process(es) on {trainer.device}", err=True)
    trainer.fit()
    if trainer.group.is_main:
        click.echo(f"done: {run / 'model.pt'} (EMA weights) at step {trainer.step}", err=True)
    trainer.group.close()
