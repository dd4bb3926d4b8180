"""Model files that cannot carry code: the safetensors tree format, the typed loader, the model card,
conversion of the older pickle files, and every command that takes a model refusing hostile and
malformed files with one error line (exit status 2) and no output."""
import math
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from common.exports import typed
from common.training import TrainConfig, Trainer
from common.weights import WeightsError, read_tree, save_tree, sha256
from molctrl.cli import main as molctrl
from molctrl.payoff import PriorPool
from molctrl.predictor import PredictorConfig, PropertyPredictor
from molctrl.prior import MoleculeDiffusion, PriorConfig
from molctrl.weights import WEIGHTS_DIR as MOL_WEIGHTS
from molctrl.weights import load_prior
from shapectrl.classifier import ShapeClassifier, ShapeClassifierConfig
from shapectrl.cli import main as shapectrl
from shapectrl.conditions import ShapeConditions
from shapectrl.control import ControlConfig, controlled_export
from shapectrl.data.normalisation import Normalisation
from shapectrl.prior import ShapeDiffusion, ShapePriorConfig
from shapectrl.weights import WEIGHTS_DIR as SHAPE_WEIGHTS

torch.set_num_threads(1)


class _Hostile:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


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
    torch.save({"kind": "molctrl.prior", "state_dict": _Hostile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"evil.pt: refused: its pickle would import posix.system"):
        read_tree(tmp_path / "evil.pt")
    assert not marker.exists()


# -- shipped weights ---------------------------------------------------------------------------------


SHIPPED = sorted([*MOL_WEIGHTS.glob("*.safetensors"), *SHAPE_WEIGHTS.glob("*.safetensors")])


def test_every_shipped_file_is_safetensors_and_matches_the_sha256_of_its_record():
    assert len(SHIPPED) == 18 and not [*MOL_WEIGHTS.glob("*.pt"), *SHAPE_WEIGHTS.glob("*.pt")]
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
    batches = lambda step, rank=0, world=1: (torch.randint(0, 4, (4, 5), generator=torch.Generator().manual_seed(step)),  # noqa: E731
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


# -- every command that takes a model, against every malformed file ----------------------------------


def _molecule_models(folder):
    torch.manual_seed(0)
    prior = MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1, n_steps=30), np.ones(10))
    predictor = PropertyPredictor(PredictorConfig(hidden=8, n_layers=1), np.zeros(6), np.ones(6))
    predictor.calibration = torch.ones(6)
    conditioned = prior.with_condition(12).export() | {"guidance": {"method": "ctrl"},
                                                       "conditions": {"mean": [0.0] * 6, "scale": [1.0] * 6}}
    pool = PriorPool(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3, 3), torch.zeros(0), 2, 0.0)
    trees = {"prior": prior.export(), "predictor": predictor.export(), "conditioned": conditioned,
             "pool": {"kind": PriorPool.kind, **pool.__dict__}}
    for name, tree in trees.items():
        save_tree(tree, folder / f"{name}.safetensors")
    (folder / "one.xyz").write_text("1\nmethane\nC 0 0 0\n")
    return trees


def _shape_models(folder):
    torch.manual_seed(0)
    normalisation, classes = Normalisation((0.0, 0.1, 0.0), 0.4), ("chair", "table")
    prior = ShapeDiffusion(ShapePriorConfig(width=16, depth=1, resolution=4, voxel_channels=4, n_steps=20),
                           normalisation=normalisation, classes=classes)
    conditions = ShapeConditions(classes, ("height",), torch.tensor([0.6]), torch.tensor([0.3]))
    classifier = ShapeClassifier(ShapeClassifierConfig(classes=classes, widths=(8, 8), embed=16, head_hidden=8),
                                 normalisation)
    trees = {"shape-prior": prior.export(), "classifier": classifier.export(),
             "controlled": controlled_export(prior.with_condition(conditions.cond_dim), conditions, ControlConfig(), {})}
    for name, tree in trees.items():
        save_tree(tree, folder / f"{name}.safetensors")
    return trees


def _malformed(tree: dict, folder, marker) -> dict[str, tuple]:
    """Files that are not a valid model of ``tree``'s kind: name -> (path, a fragment of the expected error)."""
    folder.mkdir()
    good = folder / "good.safetensors"
    save_tree(tree, good)
    state = tree.get("state_dict")
    bad = {"empty": (b"", "empty file"),
           "truncated": (good.read_bytes()[: good.stat().st_size // 2], "not a readable safetensors file"),
           "bare tensor": (torch.zeros(3), "holds a bare Tensor"),
           "foreign safetensors": ({"w": torch.zeros(3)}, "without this package's metadata"),
           "wrong kind": (tree | {"kind": "other.kind"}, "a 'other.kind' file, expected"),
           "hostile pickle": ({"kind": tree["kind"], "state_dict": _Hostile(marker)}, "refused: its pickle would import")}
    if state is None:  # a pool: its fields are checked by type and shape
        bad["missing field"] = ({k: v for k, v in tree.items() if k != "positions"}, "missing field 'positions'")
        bad["wrong type"] = (tree | {"sampling_steps": "many"}, "sampling_steps: expected int, got 'many'")
        bad["wrong shape"] = (tree | {"positions": torch.zeros(4, 3, 2)}, "positions: expected (4, 3, 3)")
    else:
        key = [k for k, v in state.items() if v.dim() == 2][-1]
        field = next(k for k, v in tree["config"].items() if type(v) is int)
        bad["missing field"] = ({k: v for k, v in tree.items() if k != "state_dict"}, "missing field 'state_dict'")
        bad["missing tensor"] = (tree | {"state_dict": {k: v for k, v in state.items() if k != key}},
                                 f"state_dict lacks 1 tensor(s) the config needs, e.g. {key!r}")
        bad["wrong type"] = (tree | {"config": tree["config"] | {field: "big"}}, f"config.{field}: expected int, got 'big'")
        bad["wrong shape"] = (tree | {"state_dict": state | {key: torch.zeros(state[key].shape[0] + 1, state[key].shape[1])}},
                              f"state_dict[{key!r}]: expected")
    files = {}
    for name, (content, message) in bad.items():
        path = folder / (name.replace(" ", "-") + (".pt" if name in ("bare tensor", "hostile pickle") else ".safetensors"))
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif name in ("bare tensor", "hostile pickle"):
            torch.save(content, path)
        elif name == "foreign safetensors":
            save_file(content, path)
        else:
            save_tree(content, path)
        files[name] = (path, message)
    return files


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Valid tiny models of every kind, and for each kind its malformed files."""
    root = tmp_path_factory.mktemp("zoo")
    trees = _molecule_models(root) | _shape_models(root)
    marker = root / "marker"
    return root, marker, {name: _malformed(tree, root / name, marker) for name, tree in trees.items()}


# (program, kind of model the slot takes, argv with BAD for the file and ROOT / OUT for folders)
SLOTS = {
    "molctrl generate --model": (molctrl, "conditioned", ["generate", "--target", "mu=1", "-n", "2", "--steps", "2",
                                                          "--out", "OUT/m.sdf", "--model", "BAD"]),
    "molctrl generate --reward-model": (molctrl, "predictor", ["generate", "--target", "mu=1", "--method", "guidance",
                                                               "--model", "ROOT/prior.safetensors", "--out", "OUT/m.sdf",
                                                               "--reward-model", "BAD"]),
    "molctrl generate --evaluator": (molctrl, "predictor", ["generate", "--target", "mu=1", "--out", "OUT/m.sdf",
                                                            "--model", "ROOT/conditioned.safetensors", "--evaluator", "BAD"]),
    "molctrl sample --model": (molctrl, "prior", ["sample", "-n", "2", "--out", "OUT/s.sdf", "--model", "BAD"]),
    "molctrl predict --model": (molctrl, "predictor", ["predict", "ROOT/one.xyz", "--property", "mu", "--model", "BAD"]),
    "molctrl finetune --prior": (molctrl, "prior", ["finetune", "--run-dir", "OUT/run", "--property", "mu",
                                                    "--prior", "BAD"]),
    "molctrl finetune --reward-model": (molctrl, "predictor", ["finetune", "--run-dir", "OUT/run", "--property", "mu",
                                                               "--prior", "ROOT/prior.safetensors", "--reward-model", "BAD"]),
    "molctrl finetune --init": (molctrl, "conditioned", ["finetune", "--run-dir", "OUT/run", "--property", "mu",
                                                         "--prior", "ROOT/prior.safetensors", "--reward-model",
                                                         "ROOT/predictor.safetensors", "--init", "BAD"]),
    "molctrl finetune --pool": (molctrl, "pool", ["finetune", "--run-dir", "OUT/run", "--method", "rgdm", "--property",
                                                  "mu", "--prior", "ROOT/prior.safetensors", "--reward-model",
                                                  "ROOT/predictor.safetensors", "--pool", "BAD"]),
    "molctrl train predictor --noise-aware": (molctrl, "prior", ["train", "predictor", "--run-dir", "OUT/run",
                                                                 "--noise-aware", "BAD"]),
    "molctrl weights show": (molctrl, "prior", ["weights", "show", "BAD"]),
    "molctrl weights convert": (molctrl, "prior", ["weights", "convert", "BAD", "OUT/new.safetensors"]),
    "shapectrl generate --model": (shapectrl, "controlled", ["generate", "--class", "chair", "--out", "OUT/gen",
                                                             "--evaluator", "ROOT/classifier.safetensors", "--model", "BAD"]),
    "shapectrl generate --evaluator": (shapectrl, "classifier", ["generate", "--class", "chair", "--out", "OUT/gen",
                                                                 "--model", "ROOT/controlled.safetensors", "--evaluator", "BAD"]),
    "shapectrl sample --model": (shapectrl, "shape-prior", ["sample", "-n", "2", "--out", "OUT/s", "--model", "BAD"]),
    "shapectrl train control --prior": (shapectrl, "shape-prior", ["train", "control", "--run-dir", "OUT/run",
                                                                   "--reward", "ROOT/classifier.safetensors", "--prior", "BAD"]),
    "shapectrl train control --reward": (shapectrl, "classifier", ["train", "control", "--run-dir", "OUT/run",
                                                                   "--prior", "ROOT/shape-prior.safetensors", "--reward", "BAD"]),
    "shapectrl train classifier --noise-aware": (shapectrl, "shape-prior", ["train", "classifier", "--run-dir", "OUT/run",
                                                                            "--noise-aware", "BAD"]),
    "shapectrl weights show": (shapectrl, "classifier", ["weights", "show", "BAD"]),
}


@pytest.mark.parametrize("slot", list(SLOTS))
def test_every_command_refuses_every_malformed_model_file_in_one_line(slot, zoo, tmp_path):
    root, marker, malformed = zoo
    program, kind, argv = SLOTS[slot]
    for name, (path, message) in malformed[kind].items():
        out = tmp_path / name.replace(" ", "-")
        out.mkdir()
        args = [a.replace("BAD", str(path)).replace("ROOT", str(root)).replace("OUT", str(out)) for a in argv]
        result = CliRunner().invoke(program, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (slot, name, result.output, result.exception)
        assert lines[-1].startswith(f"Error: {path}: ") and message in lines[-1], (slot, name, lines)
        assert len(lines) == 1, (slot, name, lines)
        assert not marker.exists() and not list(out.iterdir()), (slot, name, list(out.iterdir()))


def test_a_hostile_or_damaged_checkpoint_stops_a_resume_in_one_line(tmp_path):
    args = ["train", "prior", "--run-dir", str(tmp_path / "run"), "--steps", "1", "--hidden", "8", "--layers", "1",
            "--diffusion-steps", "20", "--limit", "16", "--batch-size", "4"]
    assert CliRunner().invoke(molctrl, args).exit_code == 0
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    resume = ["train", "prior", "--run-dir", str(tmp_path / "run"), "--steps", "2", "--resume"]
    damaged = CliRunner().invoke(molctrl, resume)
    assert damaged.exit_code == 2 and f"Error: {checkpoint}: not a readable safetensors file" in damaged.output
    checkpoint.unlink()
    marker = tmp_path / "marker"
    torch.save({"step": 1, "model": _Hostile(marker)}, tmp_path / "run" / "checkpoint.pt")
    hostile = CliRunner().invoke(molctrl, resume)
    assert hostile.exit_code == 2 and "checkpoint.pt: refused: its pickle would import posix.system" in hostile.output
    assert not marker.exists()


def test_a_well_typed_config_that_describes_no_network_is_one_line(tmp_path):
    tree = MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1, n_steps=20), np.ones(10)).export()
    save_tree(tree | {"config": tree["config"] | {"hidden": -3}}, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match=r"m.safetensors: its config does not describe a network \(RuntimeError"):
        load_prior(tmp_path / "m.safetensors")
    save_tree(tree | {"config": tree["config"] | {"schedule": "zigzag"}}, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match="m.safetensors: unknown noise schedule 'zigzag'"):
        load_prior(tmp_path / "m.safetensors")
