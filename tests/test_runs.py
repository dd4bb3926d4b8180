"""Run folders (common.runs): a resumed run keeps its recorded settings and length unless told otherwise,
and a folder that cannot be resumed or started says why in one line."""
import json
from dataclasses import asdict

import click
import pytest

from common.runs import run_record, train_config
from common.training import TrainConfig


def _fresh(steps=5):
    return {"train": asdict(TrainConfig(steps=steps, batch_size=4)), "model": {"width": 8}}


def test_a_resumed_run_keeps_its_length_unless_one_is_given(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(_fresh(steps=3)))
    record = run_record(tmp_path, resume=True, fresh=_fresh(steps=20_000))
    assert train_config(record, None).steps == 3  # not the fresh default
    assert train_config(record, 9).steps == 9 and record["train"]["steps"] == 9  # the record follows a new length
    assert record["model"] == {"width": 8}


def test_run_folders_that_cannot_be_used_say_why(tmp_path):
    with pytest.raises(click.UsageError, match="does not exist"):
        run_record(tmp_path / "none", resume=True, fresh=_fresh())
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(click.UsageError, match="run.json is not readable"):
        run_record(tmp_path, resume=True, fresh=_fresh())
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(click.UsageError, match="already holds a checkpoint: pass --resume"):
        run_record(tmp_path, resume=False, fresh=_fresh())
