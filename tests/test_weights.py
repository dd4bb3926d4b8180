"""Model files that cannot carry code: the safetensors tree format, the typed loader, the model card,
the shipped files' SHA-256, and conversion of the older pickle files (a resumed run bit for bit)."""
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.exports import typed
from common.training import TrainConfig, Trainer
from common.weights import WeightsError, read_tree, save_tree, sha256
from molctrl.cli import main as molctrl
from molctrl.predictor import PredictorConfig
from molctrl.prior import MoleculeDiffusion, PriorConfig
from molctrl.weights import WEIGHTS_DIR as MOL_WEIGHTS
from molctrl.weights import load_prior
from shapectrl.cli import main as shapectrl
from shapectrl.data.normalisation import Normalisation
from shapectrl.weights import WEIGHTS_DIR as SHAPE_WEIGHTS
from tests.hostile import Hostile

torch.set_num_threads(1)



# -- the tree format -------------------------------------------------------------------------------


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_a_tree_comes_back_exactly_as_written(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tree = {"kind": "x", "nested": {"betas": (0.9, 0.999), "ids": [0, 1, 2], "none": None, "flag": True},
            "state": {0: {"step": torch.tensor(3.0), "avg": torch.randn(2, 2, dtype=torch.float64)},
                      7: {"mask": torch.tensor([True, False])}},
            "nan": float("nan"), "tiny": 1e-300, "big": 2**53 + 1, "text": "ünïcode",
            "view": base[1:], "base": base, "same": base, "empty": torch.zeros(0, 3), "ints": torch.arange(5)}
    save_tree(tree, tmp_path / "t.safetensors")
    assert _same(tree, read_tree(tmp_path / "t.safetensors"))
    with pytest.raises(TypeError, match="cannot store a ndarray at a "):
        save_tree({"a": np.zeros(2)}, tmp_path / "t.safetensors")
    assert _same(tree, read_tree(tmp_path / "t.safetensors"))  # the failed write left the file as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_typed_checks_every_field_against_its_annotation():
    config = typed(PredictorConfig, {"properties": ["mu"], "hidden": 8}, "config")
    assert config.properties == ("mu",) and config.hidden == 8 and config.arch == "egnn"
    assert typed(Normalisation, {"mean": [0, 0, 1], "std": 2}, "n") == Normalisation((0.0, 0.0, 1.0), 2.0)
    cases = [({"hidden": "big"}, "config.hidden: expected int, got 'big'"),
             ({"hidden": True}, "config.hidden: expected int, got True"),
             ({"properties": "mu"}, r"config.properties: expected tuple\[str, \.\.\.\], got 'mu'"),
             ({"properties": ["mu", 3]}, r"config.properties\[1\]: expected str, got 3"),
             ({"width": 3}, "config: unknown field 'width'"),
             ("hidden=8", "config: expected a table of fields")]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            typed(PredictorConfig, data, "config")
    with pytest.raises(ValueError, match=r"n.mean: expected 3 items, got 2"):
        typed(Normalisation, {"mean": [0, 0], "std": 1}, "n")
    with pytest.raises(ValueError, match="n: missing field 'std'"):
        typed(Normalisation, {"mean": [0, 0, 0]}, "n")


def test_a_hostile_pickle_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"kind": "molctrl.prior", "state_dict": Hostile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"evil.pt: refused: its pickle would import posix.system"):
        read_tree(tmp_path / "evil.pt")
    assert not marker.exists()


# -- shipped weights ---------------------------------------------------------------------------------


SHIPPED = sorted([*MOL_WEIGHTS.glob("*.safetensors"), *SHAPE_WEIGHTS.glob("*.safetensors")])


def test_every_shipped_file_is_safetensors_and_matches_the_sha256_of_its_record():
    assert len(SHIPPED) == 24 and not [*MOL_WEIGHTS.glob("*.pt"), *SHAPE_WEIGHTS.glob("*.pt")]
    for path in SHIPPED:
        record = path.with_suffix(".md").read_text(encoding="utf-8")
        assert path.read_bytes()[8:9] == b"{" and f"SHA-256: `{sha256(path)}`" in record, path


def test_a_changed_shipped_file_is_refused(tmp_path):
    copy = tmp_path / "qm9-noh-prior.safetensors"
    shutil.copy(MOL_WEIGHTS / copy.name, copy)
    shutil.copy(MOL_WEIGHTS / "qm9-noh-prior.md", tmp_path)
    assert load_prior(copy).config.hidden == 128
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="its SHA-256 differs from the one in qm9-noh-prior.md"):
        load_prior(copy)


@pytest.mark.parametrize("program, name", [(molctrl, "qm9-noh-ctrl"), (molctrl, "qm9-noh-e3nn-Db-noisy"),
                                           (shapectrl, "shapes-classifier-dgcnn")])
def test_weights_show_prints_the_model_card(program, name):
    path = (MOL_WEIGHTS if program is molctrl else SHAPE_WEIGHTS) / f"{name}.safetensors"
    result = CliRunner().invoke(program, ["weights", "show", str(path)])
    assert result.exit_code == 0, result.output
    card = result.output
    kind = read_tree(path)["kind"]
    for text in (f"kind        {kind}", f"sha256      {sha256(path)} (matches {name}.md)", "check       a valid",
                 "network ", "training    step=", "## Command", "## Metrics"):
        assert text in card, text
    if program is molctrl:
        assert "setting     qm9-noh" in card
    if name == "qm9-noh-ctrl":
        assert "conditions  mean=[" in card and "guidance    method=ctrl" in card


# -- the older pickle format -------------------------------------------------------------------------


def _tiny_trainer(run_dir, steps):
    torch.manual_seed(0)
    model = MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1, n_steps=20), np.ones(10))
    batches = lambda step, rank=0, world=1: (torch.randint(0, 4, (4, 5), generator=torch.Generator().manual_seed(step)),
                                             torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(step)))
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=3, log_every=1)
    return Trainer(model, batches, config, run_dir, torch.device("cpu"))


def test_a_run_resumed_from_a_converted_pickle_checkpoint_continues_bit_for_bit(tmp_path):
    straight = _tiny_trainer(tmp_path / "straight", 6)
    straight.fit()
    run = tmp_path / "run"
    _tiny_trainer(run, 3).fit()
    torch.save(read_tree(run / "checkpoint.safetensors"), run / "checkpoint.pt")  # as earlier versions wrote it
    (run / "checkpoint.safetensors").unlink()
    converted = CliRunner().invoke(molctrl, ["weights", "convert", str(run / "checkpoint.pt"),
                                             str(run / "checkpoint.safetensors")])
    assert converted.exit_code == 0, converted.output
    (run / "checkpoint.pt").unlink()
    torch.manual_seed(123)
    resumed = _tiny_trainer(run, 6)
    assert resumed.resume() and resumed.step == 3
    resumed.fit()
    for p, q in zip([*straight.model.parameters(), *straight.ema.parameters()],
                    [*resumed.model.parameters(), *resumed.ema.parameters()]):
        assert torch.equal(p, q)
    assert _same(straight.optimizer.state_dict(), resumed.optimizer.state_dict())


def test_convert_checks_the_model_and_keeps_every_value(tmp_path):
    model = MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1, n_steps=20), np.ones(10))
    torch.save(model.export() | {"step": 5}, tmp_path / "old.pt")
    new = tmp_path / "new.safetensors"
    result = CliRunner().invoke(molctrl, ["weights", "convert", str(tmp_path / "old.pt"), str(new)])
    assert result.exit_code == 0 and f"{new}: molctrl.prior" in result.output
    assert _same(torch.load(tmp_path / "old.pt", weights_only=True), read_tree(new))
    again = CliRunner().invoke(molctrl, ["weights", "convert", str(tmp_path / "old.pt"), str(new)])
    assert again.exit_code == 2 and "exists (pass --force" in again.output
    wrong = CliRunner().invoke(molctrl, ["weights", "convert", str(tmp_path / "old.pt"), str(tmp_path / "x.pt")])
    assert wrong.exit_code == 2 and "expected a .safetensors file name" in wrong.output
    assert load_prior(tmp_path / "old.pt").config == model.config  # older files still load, read safely



def test_a_well_typed_config_that_describes_no_network_is_one_line(tmp_path):
    tree = MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1, n_steps=20), np.ones(10)).export()
    save_tree(tree | {"config": tree["config"] | {"hidden": -3}}, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match=r"m.safetensors: its config does not describe a network \(RuntimeError"):
        load_prior(tmp_path / "m.safetensors")
    save_tree(tree | {"config": tree["config"] | {"schedule": "zigzag"}}, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match="m.safetensors: unknown noise schedule 'zigzag'"):
        load_prior(tmp_path / "m.safetensors")
