"""Every command that takes a model file refuses a hostile or malformed one — empty, truncated, a bare
tensor, a foreign safetensors file, the wrong kind, a missing field or tensor, a wrong type or shape, a
pickle that would run code — with one error line naming the file (exit status 2), no code run and no
output written."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from common.control import controlled_export
from common.weights import save_tree
from molctrl.cli import main as molctrl
from molctrl.payoff import PriorPool
from molctrl.predictor import PredictorConfig, PropertyPredictor
from molctrl.prior import MoleculeDiffusion, PriorConfig
from shapectrl.classifier import ShapeClassifier, ShapeClassifierConfig
from shapectrl.cli import main as shapectrl
from shapectrl.conditions import ShapeConditions
from shapectrl.control import ShapeControlConfig
from shapectrl.data.normalisation import Normalisation
from shapectrl.prior import ShapeDiffusion, ShapePriorConfig
from tests.hostile import Hostile

torch.set_num_threads(1)




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
             "controlled": controlled_export(prior.with_condition(conditions.cond_dim), conditions, ShapeControlConfig(), {})}
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
           "hostile pickle": ({"kind": tree["kind"], "state_dict": Hostile(marker)}, "refused: its pickle would import")}
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
                                                          "--out", "OUT/m.sdf", "--proposal", "ctrl", "--model", "BAD"]),
    "molctrl generate --prior": (molctrl, "prior", ["generate", "--target", "mu=1", "--out", "OUT/m.sdf", "--prior", "BAD"]),
    "molctrl generate --reward-model": (molctrl, "predictor", ["generate", "--target", "mu=1", "--out", "OUT/m.sdf",
                                                               "--reward-model", "BAD"]),
    "molctrl generate --judge-model": (molctrl, "predictor", ["generate", "--target", "mu=1", "--out", "OUT/m.sdf",
                                                              "--judge-model", "BAD"]),
    "molctrl generate --evaluator": (molctrl, "predictor", ["generate", "--target", "mu=1", "--out", "OUT/m.sdf",
                                                            "--particles", "0", "--model", "ROOT/conditioned.safetensors",
                                                            "--evaluator", "BAD"]),
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
    "shapectrl train prior --init": (shapectrl, "shape-prior", ["train", "prior", "--run-dir", "OUT/run", "--init", "BAD"]),
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
    torch.save({"step": 1, "model": Hostile(marker)}, tmp_path / "run" / "checkpoint.pt")
    hostile = CliRunner().invoke(molctrl, resume)
    assert hostile.exit_code == 2 and "checkpoint.pt: refused: its pickle would import posix.system" in hostile.output
    assert not marker.exists()
