"""Trainer: exact resume, atomic checkpoints, epoch sampling, DDP under torchrun (gloo, 2 CPU processes)."""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.training import EpochSampler, TrainConfig, Trainer
from common.weights import read_tree
from molctrl.cli import main
from molctrl.io import read_molecules
from molctrl.prior import MoleculeDiffusion, PriorConfig


def test_epoch_sampler_covers_each_item_once_per_epoch_and_splits_ranks():
    s = EpochSampler(10, batch_size=2, seed=3)
    first_epoch = np.concatenate([s.indices(k) for k in range(5)])
    assert sorted(first_epoch) == list(range(10))
    ranks = [s.indices(0, rank=r, world_size=2) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert np.array_equal(s.indices(7), EpochSampler(10, 2, 3).indices(7))


class _Batches:
    def __call__(self, step, rank=0, world_size=1):
        g = torch.Generator().manual_seed(step)
        types = torch.randint(0, 4, (4, 5), generator=g)
        return types, torch.randn(4, 5, 3, generator=g)


def _trainer(run_dir, steps):
    torch.manual_seed(0)
    model = MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1, n_steps=20), np.ones(10))
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=3, log_every=1)
    return Trainer(model, _Batches(), cfg, run_dir, torch.device("cpu"))


def test_resume_is_exact(tmp_path):
    straight = _trainer(tmp_path / "a", 6)
    straight.fit()
    first = _trainer(tmp_path / "b", 3)
    first.fit()
    torch.manual_seed(123)  # a resumed process starts with unrelated global RNG state
    resumed = _trainer(tmp_path / "b", 6)
    assert resumed.resume() and resumed.step == 3
    resumed.fit()
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(p, q)
    shipped = read_tree(tmp_path / "b" / "model.safetensors")
    assert shipped["step"] == 6 and shipped["kind"] == "molctrl.prior"
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.endswith(".tmp")]


class _TwoGroups(torch.nn.Module):
    """Loss (a·x − 1)² + (b·x − 1)², with ``b`` in a group whose learning rate is scaled."""

    def __init__(self, scale: float):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))
        self.scale, self.stats = scale, {}

    def parameter_groups(self):
        return [{"params": [self.a]}, {"params": [self.b], "lr_scale": self.scale}]

    def forward(self, x):
        self.stats = {"a": self.a.item()}
        return ((self.a * x - 1) ** 2 + (self.b * x - 1) ** 2).mean()

    def export(self):
        return {"a": self.a.detach()}


def test_parameter_groups_scale_the_learning_rate_and_stats_reach_the_log(tmp_path, capsys):
    model = _TwoGroups(scale=10.0)
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, checkpoint_every=4, log_every=2)
    Trainer(model, lambda step, rank=0, world=1: (torch.ones(2),), cfg, tmp_path, torch.device("cpu")).fit()
    # Adam moves each parameter by about its learning rate per step while the gradient keeps its sign
    assert model.a.item() == pytest.approx(4e-3, rel=0.05) and model.b.item() == pytest.approx(4e-2, rel=0.05)
    assert "  a 0.002" in capsys.readouterr().err  # mean of a over steps 3 and 4 (1e-3·(2 + 3)/2 ≈ 2.5e-3)


def test_cosine_schedule_warms_up_then_halves_at_mid_run_and_ends_at_zero(tmp_path):
    trainer = _trainer(tmp_path, steps=100)
    trainer.config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    # lr·min(1, (s + 1)/warmup)·(1 + cos(π s / steps))/2
    assert trainer._lr(0) == pytest.approx(1e-4 * (1 + np.cos(0)) / 2)
    assert trainer._lr(50) == pytest.approx(5e-4) and trainer._lr(100) == pytest.approx(0, abs=1e-12)
    trainer.config = TrainConfig(steps=100, lr=1e-3)
    assert trainer._lr(0) == trainer._lr(100) == 1e-3  # constant
    with pytest.raises(ValueError, match="unknown lr_schedule 'cosin'"):
        TrainConfig(lr_schedule="cosin")


def test_train_cli_refuses_to_overwrite_and_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["train", "prior", "--run-dir", str(run), "--steps", "2", "--hidden", "8", "--layers", "1",
            "--diffusion-steps", "20", "--limit", "64", "--batch-size", "8", "--checkpoint-every", "1"]
    runner = CliRunner()
    assert runner.invoke(main, args).exit_code == 0
    again = runner.invoke(main, args)
    assert again.exit_code != 0 and "already holds a checkpoint" in again.output
    more = runner.invoke(main, ["train", "prior", "--run-dir", str(run), "--steps", "4", "--resume"])
    assert more.exit_code == 0, more.output
    assert read_tree(run / "model.safetensors")["step"] == 4
    missing = runner.invoke(main, ["train", "prior", "--run-dir", str(tmp_path / "none"), "--resume"])
    assert missing.exit_code != 0 and "nothing to resume" in missing.output


def test_train_cli_in_bfloat16_records_it_computes_in_it_and_keeps_it_on_resume(tmp_path, monkeypatch):
    import molctrl.egnn as egnn

    seen: list[torch.dtype] = []  # the dtype of the matrix products in every training forward pass
    forward = egnn.EGNN._forward
    monkeypatch.setattr(egnn.EGNN, "_forward", lambda self, h, *rest: (
        seen.append(self.embed(h).dtype), forward(self, h, *rest))[1])
    run = tmp_path / "run"
    args = ["train", "prior", "--run-dir", str(run), "--steps", "2", "--hidden", "8", "--layers", "1",
            "--diffusion-steps", "20", "--limit", "64", "--batch-size", "8", "--checkpoint-every", "1",
            "--precision", "bf16"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert json.loads((run / "run.json").read_text())["train"]["precision"] == "bf16"
    assert seen == [torch.bfloat16] * 2
    assert all(t.dtype == torch.float32 for t in read_tree(run / "model.safetensors")["state_dict"].values()
               if t.is_floating_point())
    more = CliRunner().invoke(main, ["train", "prior", "--run-dir", str(run), "--steps", "3", "--resume"])
    assert more.exit_code == 0, more.output
    assert seen == [torch.bfloat16] * 3


def test_compiling_is_the_default_only_for_runs_long_enough_to_pay_and_only_with_a_backend(monkeypatch):
    import shutil

    from common.runtime import COMPILE_FROM_STEPS, resolve_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile(True, 10, cpu) and not resolve_compile(False, 10**6, cpu)  # an explicit choice stands
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert not resolve_compile(None, COMPILE_FROM_STEPS - 1, cpu) and resolve_compile(None, COMPILE_FROM_STEPS, cpu)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no C++ compiler: inductor cannot build CPU kernels
    assert not resolve_compile(None, COMPILE_FROM_STEPS, cpu) and resolve_compile(None, COMPILE_FROM_STEPS, cuda)


def test_reuse_freed_memory_serves_large_tensors_from_the_heap_and_keeps_them() -> None:
    """After ``reuse_freed_memory`` a 256 MiB tensor grows the heap instead of mapping a region of its own,
    and freeing it leaves the heap as large (run in a child: it changes the process for good)."""
    if platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/maps"):
        pytest.skip("glibc on Linux only")
    script = """
import json, torch
from common.runtime import reuse_freed_memory

def regions():
    sizes = {"heap": 0, "anonymous_256mib": 0}
    for line in open("/proc/self/maps"):
        fields = line.split()
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if fields[-1] == "[heap]":
            sizes["heap"] += end - start
        elif len(fields) == 5 and end - start >= 2**28:
            sizes["anonymous_256mib"] += 1
    return sizes

before = regions()
mapped = torch.ones(2**26)
by_default = regions()
del mapped
accepted = reuse_freed_memory()
on_heap = torch.ones(2**26)
after = regions()
del on_heap
print(json.dumps([accepted, before, by_default, after, regions()]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    accepted, before, by_default, after, freed = json.loads(out.stdout.strip().splitlines()[-1])
    assert accepted
    assert by_default["anonymous_256mib"] == before["anonymous_256mib"] + 1  # glibc's default: a mapping of its own
    assert after["anonymous_256mib"] == before["anonymous_256mib"] and after["heap"] - before["heap"] > 0.9 * 2**28
    assert freed["heap"] == after["heap"]  # kept for the next step's tensors


def test_a_short_training_run_is_not_compiled_by_default(tmp_path):
    run = tmp_path / "run"
    args = ["train", "prior", "--run-dir", str(run), "--steps", "1", "--hidden", "8", "--layers", "1",
            "--diffusion-steps", "20", "--limit", "16", "--batch-size", "8"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert json.loads((run / "run.json").read_text())["train"]["compile"] is False


def test_ddp_with_two_cpu_processes(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "molctrl.cli", "train", "prior", "--run-dir", str(run), "--steps", "3", "--hidden", "8",
           "--layers", "1", "--diffusion-steps", "20", "--limit", "64", "--batch-size", "4",
           "--checkpoint-every", "3", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert "2 process(es)" in done.stderr
    assert read_tree(run / "model.safetensors")["step"] == 3


def test_full_size_qm9_configuration_trains_and_samples(tmp_path):
    """EDM's configuration (with H, 9 layers, 256 features) on a few molecules: one step, then samples."""
    run = tmp_path / "edm"
    result = CliRunner().invoke(main, ["train", "prior", "--setting", "qm9", "--hidden", "256", "--layers", "9",
                                       "--run-dir", str(run), "--steps", "2", "--limit", "8", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "edm.xyz"
    sampled = CliRunner().invoke(main, ["sample", "-n", "2", "--steps", "2", "--model", str(run / "model.safetensors"),
                                        "--out", str(out), "--json"])
    assert sampled.exit_code == 0, sampled.output
    summary = json.loads(sampled.output.strip().splitlines()[-1])
    assert summary["n"] == 2 and len(read_molecules(out)) == 2
