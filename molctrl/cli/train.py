"""``molctrl train``: train models with checkpoints, resume, progress and DDP (``torchrun``)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np
import torch

from common.cli import compute_device, compute_options, precision_option
from common.runs import log_eval, run_record, train_config, train_in_run
from common.runtime import (
    COMPILE_FROM_STEPS,
    resolve_compile,
    resolve_precision,
    seed_everything,
)
from common.training import TrainConfig
from molctrl.batches import MoleculeBatches
from molctrl.data.qm9 import SETTINGS, SPLITS, QM9Split, load_split
from molctrl.predictor import (
    ARCHITECTURES,
    PROPERTIES,
    PredictorConfig,
    PropertyPredictor,
)
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
              help="Folder for checkpoint.safetensors, model.safetensors (EMA weights), run.json and eval.jsonl.")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Total optimisation steps  [default: 20000; on --resume: the run's own]")
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
@compute_options
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the network: up to a minute once, then ~1.1x faster steps (docs/molecules.md)  "
                   "[default: on for runs of "
                   f"{COMPILE_FROM_STEPS:,} steps or more, where CUDA or a C++ compiler is present]")
@precision_option("fp32")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoint.safetensors with its run.json settings "
              "(only --steps may change, to train longer).")
def prior(setting, split, run_dir, steps, batch_size, lr, warmup, ema_decay, hidden, layers, diffusion_steps,
          schedule, checkpoint_every, eval_every, eval_samples, eval_steps, limit, seed, device, threads, compile_,
          precision, resume) -> None:
    """Train the unconditional molecule prior (EGNN + E(3)-invariant diffusion)."""
    dev = compute_device(device, threads)
    run = Path(run_dir)
    fresh = {"model": asdict(PriorConfig(setting=setting, hidden=hidden, n_layers=layers, n_steps=diffusion_steps,
                                         schedule=schedule)),
             "train": asdict(TrainConfig(steps=steps or 20_000, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                                         ema_decay=ema_decay, checkpoint_every=checkpoint_every, seed=seed,
                                         compile=resolve_compile(compile_, steps or 20_000, dev),
                                         precision=resolve_precision(precision, dev))),
             "data": {"split": split, "limit": limit},
             "eval": {"every": eval_every, "samples": eval_samples, "steps": eval_steps}}
    record = run_record(run, resume, fresh)
    model_cfg, train_cfg = PriorConfig(**record["model"]), train_config(record, steps)
    eval_every, eval_samples, eval_steps = (record["eval"][k] for k in ("every", "samples", "steps"))
    seed_everything(train_cfg.seed)
    data = _training_data(model_cfg.setting, record)
    model = MoleculeDiffusion(model_cfg, data.n_atoms_histogram())
    if train_cfg.compile:
        model.denoiser.egnn.compile_slices()
    eval_log = run / "eval.jsonl"

    def evaluate(step: int, ema_model: MoleculeDiffusion) -> None:
        if eval_every and step % eval_every == 0:
            t0 = time.perf_counter()
            try:
                metrics = _sample_metrics(ema_model, eval_samples, eval_steps, seed=step)
            except Exception as err:  # noqa: BLE001 -- an evaluation must never kill a long training run
                click.echo(f"eval at step {step} failed: {err!r}", err=True)
                return
            log_eval(eval_log, {"step": step, "samples": eval_samples, "sampling_steps": eval_steps, **metrics,
                                 "seconds": round(time.perf_counter() - t0, 1)})
            ema_model.train()

    _fit(model, MoleculeBatches(data, train_cfg.batch_size, train_cfg.seed), train_cfg, run, record, dev,
         resume, evaluate)


def _training_data(setting: str, record: dict) -> QM9Split:
    data = load_split(setting, record["data"]["split"])
    limit = record["data"]["limit"]
    return data.subset(slice(limit)) if limit else data


def _fit(model: torch.nn.Module, batches, train_cfg: TrainConfig, run: Path, record: dict,
         device: torch.device, resume: bool, on_checkpoint) -> None:
    """:func:`common.runs.train_in_run` on molecules (their count recorded in ``run.json``)."""
    record["data"]["molecules"] = len(batches)
    train_in_run(model, batches, train_cfg, run, record, device, resume,
                 f"{len(batches)} molecules of {record['model']['setting']}/{record['data']['split']}",
                 on_checkpoint)


@train.command()
@click.option("--setting", type=click.Choice(list(SETTINGS)), default="qm9-noh", show_default=True)
@click.option("--split", type=click.Choice(["Da", "Db", "train"]), default="Da", show_default=True,
              help="Labelled training molecules: Da for evaluators, Db for reward predictors.")
@click.option("--arch", type=click.Choice(list(ARCHITECTURES)), default="egnn", show_default=True,
              help="egnn: EDM's evaluator (7 x 128, attention); e3nn: tensor-product network (4 x 32).")
@click.option("--property", "properties", multiple=True, default=("all",), show_default=True,
              type=click.Choice([*PROPERTIES, "all"]), help="Property to learn (repeat for several; all: the six).")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True,
              help="Folder for checkpoint.safetensors, model.safetensors (EMA weights + calibration), run.json and eval.jsonl.")
@click.option("--epochs", type=click.FloatRange(0, min_open=True), default=None,
              help="Passes over the training split  [default: 20; on --resume: the run's own]")
@click.option("--batch-size", type=int, default=96, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (cosine decay to 0).")
@click.option("--warmup", type=int, default=200, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--ema", "ema_decay", type=float, default=0.999, show_default=True)
@click.option("--hidden", type=int, default=0, help="Width (default: egnn 128, e3nn 32 scalar channels).")
@click.option("--layers", type=int, default=0, help="Blocks (default: egnn 7, e3nn 4).")
@click.option("--dipole-head", is_flag=True,
              help="Predict mu as the length of Σ q_i (x_i − x̄) + Σ μ_i from learned partial charges (and, for "
                   "e3nn, atomic dipoles) instead of a sum of atom contributions.")
@click.option("--checkpoint-every", type=int, default=1000, show_default=True,
              help="Steps between checkpoints; each also scores the validation split (eval.jsonl) and refits "
                   "the likelihood calibration s.")
@click.option("--limit", type=int, default=None, help="Train on the first LIMIT molecules only (smoke tests).")
@click.option("--valid-limit", type=int, default=None, help="Score only the first molecules of the validation split (QM9 order: smoke tests only).")
@click.option("--seed", type=int, default=0, show_default=True)
@compute_options
@click.option("--noise-aware", "noise_prior", default=None, metavar="PRIOR",
              help="Train f(z_t, t) on states noised by this prior's diffusion (a model.safetensors, or 'shipped'), for "
                   "classifier guidance; its calibration s(t) is fitted per bin of t.")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoint.safetensors with its run.json settings "
              "(only --epochs may change, to train longer; the cosine schedule stretches with it).")
def predictor(setting, split, arch, properties, run_dir, epochs, batch_size, lr, warmup, ema_decay, hidden, layers,
              dipole_head, checkpoint_every, limit, valid_limit, seed, device, threads, noise_prior, resume) -> None:
    """Train a property predictor (all six QM9 properties in one head by default)."""
    dev = compute_device(device, threads)
    run = Path(run_dir)
    properties = PROPERTIES if "all" in properties else tuple(dict.fromkeys(properties))
    fresh = {"model": asdict(PredictorConfig(setting=setting, arch=arch, properties=properties, hidden=hidden,
                                             n_layers=layers, dipole_head=dipole_head)),
             "data": {"split": split, "limit": limit, "valid_limit": valid_limit}}
    if noise_prior:
        from molctrl.weights import load_prior

        fresh["noise_prior"] = asdict(load_prior(None if noise_prior == "shipped" else noise_prior).config)
    fresh["train"] = asdict(TrainConfig(steps=0, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                                        lr_schedule="cosine", ema_decay=ema_decay,
                                        checkpoint_every=checkpoint_every, seed=seed))
    record = run_record(run, resume, fresh)
    data = _training_data(record["model"]["setting"], record)
    if epochs is None and not resume:
        epochs = 20
    steps = None if epochs is None else math.ceil(epochs * len(data) / record["train"]["batch_size"])
    model_cfg, train_cfg = PredictorConfig(**record["model"]), train_config(record, steps)
    seed_everything(train_cfg.seed)
    labels = data.labels(model_cfg.properties)
    mean, mad = labels.mean(0), np.abs(labels - labels.mean(0)).mean(0)
    if record.get("noise_prior"):
        from molctrl.noisy_predictor import NoisyPropertyPredictor

        model = NoisyPropertyPredictor(model_cfg, mean, mad, PriorConfig(**record["noise_prior"]))
    else:
        model = PropertyPredictor(model_cfg, mean, mad)
    valid = load_split(model_cfg.setting, "valid")
    if record["data"].get("valid_limit"):
        valid = valid.subset(slice(record["data"]["valid_limit"]))
    valid_labels = valid.labels(model_cfg.properties)

    def evaluate(step: int, ema_model: PropertyPredictor) -> None:
        t0 = time.perf_counter()
        ema_model.eval()
        errors = ema_model.calibrate(valid.types, valid.positions, valid_labels, seed=step)
        log_eval(run / "eval.jsonl", {"step": step, "split": "valid", "molecules": len(valid), **errors,
                                       "seconds": round(time.perf_counter() - t0, 1)})
        ema_model.train()

    batches = MoleculeBatches(data, train_cfg.batch_size, train_cfg.seed, model_cfg.properties)
    _fit(model, batches, train_cfg, run, record, dev, resume, evaluate)
