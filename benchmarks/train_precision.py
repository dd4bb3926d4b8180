"""Training in bfloat16 against float32, on the model that ships: does the lower precision change what
training learns, and what does it save?

    python -m benchmarks.train_precision [--model PATH] [--from-scratch] [--steps 500] [--batch-size 64]
        [--lr 1e-4] [--valid 2000] [-n 2000] [--sampling-steps 50] [--seed 0] [--out benchmarks/results/train_precision_cpu.json]

Protocol: the shipped ``qm9-noh`` prior is trained on for ``--steps`` more steps of its own training
recipe (the trainer of ``molctrl train prior``: AMSGrad, constant learning rate, adaptive clipping, the
training split), once per precision, each from the same weights with the same batches, times and noise
(one seed). With ``--from-scratch`` the start is a freshly initialised network of the same configuration
(the same initial weights for every precision) instead. The trained weights themselves (not their moving
average, which would hide the steps) are then scored in float32, so that only how they were trained differs;
then their moving average (the trainer's EMA, decay 0.999: what a run ships) the same way:

* the denoising loss (EDM's L2) on the first ``--valid`` molecules of the validation split, at times
  and noise drawn once from the seed;
* EDM's validity, uniqueness and novelty of ``-n`` samples (``--sampling-steps`` dpm2 steps, float32,
  the same seed for every row).

The first row scores the starting weights the same way, so a row's change is what its steps did. Each
training row records its seconds per step on this machine's threads.
"""
from __future__ import annotations

import copy
import sys
import tempfile

import click
import torch

from benchmarks.prior_samples import score_samplers
from benchmarks.record import command_line, emit, machine_info
from common.runtime import PRECISIONS, seed_everything, set_precision
from common.training import TrainConfig, Trainer
from molctrl.batches import MoleculeBatches
from molctrl.data.qm9 import load_split
from molctrl.prior import MoleculeDiffusion
from molctrl.weights import DEFAULT_PRIOR, load_prior


@torch.no_grad()
def validation_loss(model: MoleculeDiffusion, batches: MoleculeBatches, n_batches: int, seed: int) -> float:
    """Mean ε-loss over ``n_batches`` validation batches, every time and noise drawn from ``seed``."""
    model.eval()
    torch.manual_seed(seed)
    losses = [model(*batches(step)).item() for step in range(n_batches)]
    return sum(losses) / len(losses)


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=str(DEFAULT_PRIOR),
              show_default=True)
@click.option("--from-scratch", is_flag=True, help="Start from fresh weights of the model's configuration.")
@click.option("--steps", type=click.IntRange(1), default=500, show_default=True, help="Training steps per precision.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="The shipped prior's learning rate.")
@click.option("--precision", "precisions", type=click.Choice(list(PRECISIONS)), multiple=True,
              default=("fp32", "bf16"), show_default=True)
@click.option("--valid", type=click.IntRange(1), default=2000, show_default=True,
              help="Validation molecules for the loss (whole batches of --batch-size).")
@click.option("-n", "n_samples", type=click.IntRange(1), default=2000, show_default=True, help="Samples per row.")
@click.option("--sampling-steps", type=click.IntRange(1), default=50, show_default=True, help="dpm2 steps of the samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON record here.")
def main(model_path: str, from_scratch: bool, steps: int, batch_size: int, lr: float, precisions: tuple[str, ...], valid: int,
         n_samples: int, sampling_steps: int, seed: int, out: str | None) -> None:
    """Train the shipped prior on (or a fresh copy of it) in each precision and score the results in float32."""
    start = load_prior(model_path)
    if from_scratch:
        seed_everything(seed)
        start = MoleculeDiffusion(start.config, start.n_atoms_hist)
    setting = start.config.setting
    train_batches = MoleculeBatches(load_split(setting, "train"), batch_size, seed)
    valid_batches = MoleculeBatches(load_split(setting, "valid").subset(slice(valid)), batch_size, seed)
    n_valid_batches = max(1, valid // batch_size)

    def score(model: MoleculeDiffusion) -> dict:
        loss = validation_loss(model, valid_batches, n_valid_batches, seed)
        row = score_samplers(model, [(sampling_steps, "dpm2", "fp32")], n_samples, seed)[0]
        return {"valid_loss": round(loss, 6), **{k: row[k] for k in ("validity", "uniqueness", "novelty",
                                                                       "atom_stability", "mol_stability")}}

    rows = [{"precision": None, "steps": 0, **score(start)}]
    print(rows[-1], file=sys.stderr)
    for precision in precisions:
        model = copy.deepcopy(start)
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=steps,
                             log_every=max(1, steps // 5), seed=seed, precision=precision)
        seed_everything(seed)
        with tempfile.TemporaryDirectory() as run:
            trainer = Trainer(model, train_batches, config, run, torch.device("cpu"))
            trainer.fit()
        for weights, trained in (("raw", trainer.model), ("average", trainer.ema.module)):
            set_precision(trained, "fp32")  # scored in float32 whatever it was trained in
            rows.append({"precision": precision, "steps": steps, "weights": weights,
                         "train_seconds": round(trainer.elapsed, 1), "seconds_per_step": round(trainer.elapsed / steps, 3),
                         **score(trained)})
            print(rows[-1], file=sys.stderr)
    record = {"model": model_path, "start": "fresh weights" if from_scratch else "the model's weights", "setting": setting, "batch_size": batch_size, "lr": lr,
              "valid_molecules": n_valid_batches * batch_size, "samples": n_samples,
              "sampling": f"{sampling_steps} dpm2 steps, fp32", "seed": seed, "rows": rows,
              "threads": torch.get_num_threads(),
              "command": command_line("benchmarks.train_precision"), "machine": machine_info()}
    emit(record, out, indent=1)


if __name__ == "__main__":
    main()
