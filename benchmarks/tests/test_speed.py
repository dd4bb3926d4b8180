"""The speed benchmark at a tiny configuration: the JSON record's shape, never its timings."""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from benchmarks import speed
from benchmarks.speed import BenchConfig, run_benchmark

TINY = {"tiny": BenchConfig("qm9-noh", hidden=16, n_layers=2, n_atoms=5, batch=4)}
STEP_KEYS = {"ms", "molecules_per_s", "ms_all", "calls_per_measurement"}


def _check_impl(record: dict, repeats: int) -> None:
    assert record["n_parameters"] > 0
    for kind in ("reverse_step", "train_step"):
        step = record[kind]
        assert STEP_KEYS <= set(step)
        assert step["ms"] > 0 and step["molecules_per_s"] > 0 and step["calls_per_measurement"] >= 1
        assert len(step["ms_all"]) == repeats and all(v > 0 for v in step["ms_all"])


def test_record_has_expected_keys_and_positive_numbers() -> None:
    record = run_benchmark(TINY, torch.device("cpu"), repeats=1, command="test", min_time=0.0, warmup=1,
                           precisions=("fp32", "bf16"))
    json.dumps(record)  # serialisable
    tiny = record["configs"]["tiny"]
    assert tiny["setting"] == "qm9-noh" and tiny["batch"] == 4 and tiny["n_layers"] == 2 and tiny["hidden"] == 16
    _check_impl(tiny["ours"], repeats=1)
    _check_impl(tiny["ours_bf16"], repeats=1)
    assert "edm" not in tiny and "speedup_ours_over_edm" not in tiny
    assert tiny["processes"] == "one per workload"
    meta = record["metadata"]
    for key in ("device", "device_name", "torch", "threads", "repeats", "date", "git_commit", "command"):
        assert key in meta
    assert meta["threads"] > 0 and meta["repeats"] == 1 and meta["command"] == "test"
    assert meta["torch"] == torch.__version__ and meta["device_name"]


def test_interleaved_timing_repeats_every_function() -> None:
    calls = {"a": 0, "b": 0}

    def bump(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    timers = speed.local_timers({"a": bump("a"), "b": bump("b")}, torch.device("cpu"))
    out = speed.time_interleaved(timers, repeats=3, warmup=1, min_time=0.0)
    assert set(out) == {"a", "b"} and all(len(v["ms"]) == 3 for v in out.values())
    assert calls == {"a": 4, "b": 4}  # one warm-up call and three measured calls each


def test_cli_writes_json_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "CONFIGS", TINY)
    out = tmp_path / "sub" / "speed.json"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(speed.main, ["--device", "cpu", "--repeats", "1", "--min-time", "0",
                                                 "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert json.loads(result.output) == record
    assert record["metadata"]["threads"] == 1 and record["metadata"]["glibc_no_mmap"] is False
    _check_impl(record["configs"]["tiny"]["ours"], repeats=1)
    assert [p.name for p in out.parent.iterdir()] == ["speed.json"]  # no temporary file left


@pytest.mark.skipif(not os.environ.get("EDM_REPO"), reason="set EDM_REPO to a checkout of EDM to test against it")
def test_edm_reference_at_tiny_size() -> None:
    record = run_benchmark(TINY, torch.device("cpu"), repeats=1, edm_repo=os.environ["EDM_REPO"],
                           min_time=0.0, warmup=1, edm_configs=("tiny",))
    tiny = record["configs"]["tiny"]
    _check_impl(tiny["edm"], repeats=1)
    assert all(v > 0 for v in tiny["speedup_ours_over_edm"].values())
    assert record["metadata"]["edm_repo"]["sha256_models_egnn_new"]


def test_sampling_and_steered_sections_with_the_shipped_prior(tmp_path: Path) -> None:
    """``--row`` and ``--steered`` alone skip the step timings and report what they measured."""
    threads = torch.get_num_threads()
    out = tmp_path / "speed.json"
    try:
        result = CliRunner().invoke(speed.main, ["--threads", "1", "--row", "5:dpm2:bf16", "--sampling-n", "8",
                                                 "--steered", "2:5:dpm2", "--steered-n", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["configs"] == {}
    (row,) = record["sampling"]["rows"]
    assert row["sampling_steps"] == 5 and row["solver"] == "dpm2" and row["precision"] == "bf16"
    assert row["molecules_per_s"] > 0
    assert 0 <= row["validity"] <= 1 and 0 <= row["uniqueness"] <= 1
    (steered,) = record["steered"]
    assert steered["network_calls_per_molecule"] == 2 * 6  # K particles × (5 steps + the final one)
    assert 0 < steered["reward_share"] < 1 and steered["seconds_per_molecule"] > 0


@pytest.mark.parametrize("option, text", [("--row", "5:rk4"), ("--row", "x:dpm2"), ("--row", "5:dpm2:fp8"),
                                          ("--steered", "0:5:dpm2")])
def test_bad_sampler_specs_get_one_line_errors(option: str, text: str) -> None:
    result = CliRunner().invoke(speed.main, [option, text])
    assert result.exit_code == 2 and text in result.output


def test_a_worker_that_cannot_build_its_workloads_raises_why(tmp_path: Path) -> None:
    import click

    build = partial(speed.edm_workloads, TINY["tiny"], torch.device("cpu"), str(tmp_path))  # not an EDM checkout
    with pytest.raises(click.BadParameter, match="has no egnn/models.py"):
        speed.IsolatedWorkload(build, "reverse_step", torch.device("cpu"), threads=1, no_mmap=False)


def test_a_worker_that_dies_while_timing_raises_that_not_a_broken_pipe() -> None:
    worker = speed.IsolatedWorkload(partial(speed.ours_workloads, TINY["tiny"], torch.device("cpu")), "reverse_step",
                                    torch.device("cpu"), threads=1, no_mmap=False)
    worker._process.kill()
    worker._process.join()
    with pytest.raises(RuntimeError, match="the benchmark worker exited"):
        try:
            worker.seconds_per_call(1)
        finally:
            worker.close()
