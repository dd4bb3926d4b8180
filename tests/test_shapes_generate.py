"""``shapectrl generate`` (files, contact sheet, summary, clear errors), the contact sheet and the
shipped-weights lookup; tiny models built in temporary folders."""
from __future__ import annotations

import copy
import importlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from plyfile import PlyData

from common.control import controlled_export
from common.runtime import resolve_precision
from common.weights import save_tree
from shapectrl.classifier import ShapeClassifier, ShapeClassifierConfig
from shapectrl.cli import main
from shapectrl.conditions import ShapeConditions
from shapectrl.control import ShapeControlConfig
from shapectrl.data.normalisation import Normalisation
from shapectrl.io import read_ply
from shapectrl.mesh import mesh_missing
from shapectrl.pipeline import ShapeGenerationConfig, ShapeGenerator
from shapectrl.prior import ShapeDiffusion, ShapePriorConfig
from shapectrl.render import contact_sheet
from shapectrl.weights import DEFAULT_MODELS, WEIGHTS_DIR, weight_name, weight_path

torch.set_num_threads(1)

CLASSES = ("chair", "table")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[str, str]:
    """Paths of a tiny controlled model and a tiny evaluator."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    normalisation = Normalisation((0.0, 0.1, 0.0), 0.4)
    prior = ShapeDiffusion(ShapePriorConfig(width=16, depth=1, resolution=4, voxel_channels=4, n_steps=20),
                           normalisation=normalisation, classes=CLASSES)
    conditions = ShapeConditions(CLASSES, ("height", "chair_back_height"), torch.tensor([0.6, 0.4]),
                                 torch.tensor([0.3, 0.2]))
    model = prior.with_condition(conditions.cond_dim)
    torch.nn.init.normal_(model.denoiser.cond_embed.weight)  # a condition that acts, as after training
    save_tree(controlled_export(model, conditions, ShapeControlConfig(), {}), folder / "model.safetensors")
    evaluator = ShapeClassifier(ShapeClassifierConfig(arch="dgcnn", classes=CLASSES, widths=(8, 8), embed=16,
                                                      head_hidden=8), normalisation)
    save_tree(evaluator.export(), folder / "evaluator.safetensors")
    return str(folder / "model.safetensors"), str(folder / "evaluator.safetensors")


def _run(weights: tuple[str, str], out, *args: str):
    model, evaluator = weights
    return CliRunner().invoke(main, ["generate", "--model", model, "--evaluator", evaluator, "--out", str(out),
                                     "-n", "3", "--points", "64", "--steps", "3", "--threads", "1", *args])


def test_generate_writes_clouds_sheet_and_summary(tmp_path, weights):
    out = tmp_path / "gen"
    result = _run(weights, out, "--class", "chair", "--attr", "chair_back_height=0.5", "--attr", "height=0.8",
                  "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    assert printed["target"] == {"class": "chair", "attributes": {"chair_back_height": 0.5, "height": 0.8}}
    assert 0 <= printed["class_accuracy"] <= 1 and set(printed["attribute_mae"]) == {"chair_back_height", "height"}
    assert printed["method"] == "rgdm" and printed["clouds"] == 3 and printed["seconds"] >= 0
    assert (printed["model"], printed["evaluator"]) == weights  # files not shipped: by their paths
    assert printed["precision"] == resolve_precision("auto", torch.device("cpu"))  # the default, resolved
    plys = sorted(out.glob("*.ply"))
    assert [p.name for p in plys] == ["sample_0000.ply", "sample_0001.ply", "sample_0002.ply"]
    assert read_ply(plys[0]).shape == (64, 3)
    assert (out / "contact_sheet.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in saved.items() if k != "samples"} == printed
    assert len(saved["samples"]) == 3 and saved["samples"][0]["file"] == "sample_0000.ply"
    assert saved["samples"][0]["class"] in CLASSES and set(saved["samples"][0]["attributes"]) == {"chair_back_height", "height"}


def _summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_generate_guides_attributes_and_samples_a_class_alone_from_the_model(tmp_path, weights):
    """By default a class alone is the model itself (w = 1) and attributes are guided (w = 2) on every step; a
    guidance window of the whole chain is every step, a shorter one changes the clouds."""
    default = _summary(_run(weights, tmp_path / "default", "--class", "chair", "--json"))
    assert [default["guidance_scale"], default["guidance_window"]] == [1, None]
    attribute = _summary(_run(weights, tmp_path / "attribute", "--class", "chair", "--attr", "height=0.7", "--json"))
    assert [attribute["guidance_scale"], attribute["guidance_window"]] == [2, [0, 20]]
    clouds = {}
    for name, window, expected in (("every", [], [0, 20]), ("same", ["--guidance-window", "0:20"], [0, 20]),
                                   ("window", ["--guidance-window", "6:20"], [6, 20])):
        summary = _summary(_run(weights, tmp_path / name, "--class", "chair", "--guidance-scale", "2", "--json", *window))
        assert summary["guidance_window"] == expected
        clouds[name] = read_ply(tmp_path / name / "sample_0000.ply")
    assert np.array_equal(clouds["every"], clouds["same"]) and not np.allclose(clouds["every"], clouds["window"])
    beyond = _run(weights, tmp_path / "beyond", "--class", "chair", "--guidance-scale", "2", "--guidance-window", "5:30")
    assert beyond.exit_code == 2 and "guidance window 5:30 reaches beyond the 20 diffusion steps" in beyond.output
    assert not (tmp_path / "beyond").exists()


def test_generate_draws_off_class_clouds_again(tmp_path, weights):
    """The class check (here also the evaluator, its bias set so that half of the unchecked clouds are chairs) draws
    again exactly the clouds it puts in another class; the others are those drawn without the check, and the
    summary's off-class count is what the evaluator finds."""
    model, evaluator = weights
    args = ("--class", "chair", "-n", "8", "--json")
    _summary(_run(weights, tmp_path / "unbiased", *args, "--redraw", "0"))
    classifier = ShapeClassifier.load(evaluator).eval()
    clouds = torch.from_numpy(np.stack([read_ply(path) for path in sorted((tmp_path / "unbiased").glob("*.ply"))]))
    margin = classifier.predict_logits_model_units(clouds.float()) @ torch.tensor([1.0, -1.0])  # chair − table
    with torch.no_grad():
        classifier.head[-1].bias[0] -= margin.median() + 1e-4
    save_tree(classifier.export(), tmp_path / "check.safetensors")
    check_weights = (model, str(tmp_path / "check.safetensors"))
    args += ("--reward", str(tmp_path / "check.safetensors"))
    plain = _summary(_run(check_weights, tmp_path / "plain", *args, "--redraw", "0"))
    checked = _summary(_run(check_weights, tmp_path / "checked", *args, "--redraw", "3"))
    assert "class_check" not in plain
    first = json.loads((tmp_path / "plain" / "summary.json").read_text())["samples"]
    assert sum(sample["class"] == "chair" for sample in first) == 4
    check = checked["class_check"]
    assert check["rounds"] == 3 and check["redrawn"] == 4 and 4 <= check["extra_draws"] <= 12
    saved = json.loads((tmp_path / "checked" / "summary.json").read_text())["samples"]
    assert check["off_class"] == sum(sample["class"] != "chair" for sample in saved)
    for sample in first:
        same = np.array_equal(read_ply(tmp_path / "plain" / sample["file"]), read_ply(tmp_path / "checked" / sample["file"]))
        assert same == (sample["class"] == "chair"), sample


def test_generate_reports_attributes_without_a_class(tmp_path, weights):
    result = _run(weights, tmp_path / "gen", "--attr", "height=0.7")
    assert result.exit_code == 0, result.output
    assert "class accuracy" not in result.output and "height: mean |measured - target|" in result.output
    assert json.loads((tmp_path / "gen" / "summary.json").read_text())["class_accuracy"] is None


@pytest.mark.parametrize("args, message", [
    (["--attr", "height"], "Invalid value for '--attr': expected NAME=VALUE"),
    (["--attr", "height=tall"], "Invalid value for '--attr': expected NAME=VALUE"),
    (["--attr", "wingspan=1"], "Invalid value for --attr: unknown attribute 'wingspan'"),
    (["--class", "sofa"], "Invalid value for --class: unknown class 'sofa'"),
    ([], "give a target"),
    (["--class", "chair", "--guidance-window", "9:3"], "Invalid value for '--guidance-window': '9:3': expected LO:HI"),
    (["--class", "chair", "--guidance-window", "5:20", "--particles", "2"], "a guidance window applies to sampling"),
    (["--class", "chair", "--redraw", "-1"], "Invalid value for '--redraw'"),
])
def test_generate_rejects_bad_targets(tmp_path, weights, args, message):
    result = _run(weights, tmp_path / "gen", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "gen").exists()


def test_generate_warns_of_an_attribute_rare_in_the_training_data(tmp_path, weights):
    result = _run(weights, tmp_path / "gen", "--attr", "height=1.6")  # mean 0.6, sd 0.3: 3.3 sd
    assert result.exit_code == 0, result.output
    assert "Warning: height=1.6 is 3.3 standard deviations from the training mean 0.6" in result.output


def test_generate_refuses_existing_outputs_before_sampling(tmp_path, weights):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "contact_sheet.png").write_bytes(b"old")
    result = _run(weights, out, "--class", "table")
    assert result.exit_code == 2 and "contact_sheet.png already exists" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png"]
    assert _run(weights, out, "--class", "table", "--overwrite").exit_code == 0
    assert (out / "contact_sheet.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.skipif(mesh_missing() is not None, reason="pymeshlab is not installed")
def test_generate_with_mesh_writes_a_surface_per_cloud_and_their_sheet(tmp_path, weights):
    out = tmp_path / "gen"
    (out / "old").mkdir(parents=True)
    (out / "sample_0001_mesh.ply").write_bytes(b"old")
    refused = _run(weights, out, "--class", "chair", "--mesh")
    assert refused.exit_code == 2 and "sample_0001_mesh.ply already exists" in refused.output
    result = _run(weights, out, "--class", "chair", "--mesh", "--overwrite", "--json")
    assert result.exit_code == 0, result.output
    mesh = json.loads(result.output.strip().splitlines()[-1])["mesh"]
    assert mesh["method"] == "offset" and mesh["made"] == 3 and 0 <= mesh["watertight"] <= 1
    for sample in json.loads((out / "summary.json").read_text())["samples"]:
        ply = PlyData.read(str(out / sample["mesh"]["file"]))
        assert len(ply["face"]) == sample["mesh"]["faces"] > 0
    assert (out / "meshes.png").read_bytes()[:8] == PNG_MAGIC


def test_generate_with_mesh_names_the_missing_library_before_sampling(tmp_path, weights, monkeypatch):
    monkeypatch.setattr(importlib.import_module("shapectrl.cli.generate"), "mesh_missing", lambda: "surfaces need pymeshlab: pip install pymeshlab")
    result = _run(weights, tmp_path / "gen", "--class", "chair", "--mesh", "ball-pivoting")
    assert result.exit_code == 2 and "--mesh: surfaces need pymeshlab" in result.output
    assert not (tmp_path / "gen").exists()


def test_generate_names_a_missing_model(tmp_path, weights):
    result = _run((str(tmp_path / "none.pt"), weights[1]), tmp_path / "gen", "--class", "chair")
    assert result.exit_code == 2 and result.output == f"Error: {tmp_path / 'none.pt'}: no such file\n"


def test_contact_sheet_writes_a_png(tmp_path):
    clouds = [np.random.default_rng(k).normal(size=(200, 3)) for k in range(3)] + [torch.rand(50, 3)]
    path = tmp_path / "sheet.png"
    contact_sheet(clouds, ["a", "b\nc", "d", "e"], path, columns=2, title="four clouds")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temporary file left
    with pytest.raises(ValueError, match="one caption per cloud"):
        contact_sheet(clouds, ["a"], path)


def test_weight_path_maps_shipped_names(tmp_path):
    assert weight_path(tmp_path / "here.safetensors") == tmp_path / "here.safetensors"
    assert weight_name(WEIGHTS_DIR / DEFAULT_MODELS["rgdm"]) == DEFAULT_MODELS["rgdm"]  # the same on every machine
    assert weight_name(tmp_path / DEFAULT_MODELS["rgdm"]) == str(tmp_path / DEFAULT_MODELS["rgdm"])  # a copy elsewhere
    shipped = WEIGHTS_DIR / DEFAULT_MODELS["rgdm"]
    if shipped.exists():
        assert weight_path(DEFAULT_MODELS["rgdm"]) == shipped
    else:
        with pytest.raises(FileNotFoundError, match=str(shipped)):
            weight_path(DEFAULT_MODELS["rgdm"])


def test_generate_steers_particles_from_the_shipped_prior(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--class", "chair", "--attr", "chair_back_height=0.6", "-n", "2",
                                       "--particles", "4", "--steps", "3", "--points", "64", "--out", str(tmp_path / "s"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["particles"] == 4 and summary["network_calls_per_cloud"] == 4 * 4 and 1 <= summary["mean_ess"] <= 4
    assert summary["method"] == "smc, 4 particles, prior proposal, best particle" and summary["guidance_scale"] is None
    assert summary["temperature"] == 1.0 and summary["pick"] == "best"  # the default
    assert summary["tolerance"] == 0.1  # the model's training width
    assert summary["model"] == DEFAULT_MODELS["rgdm"]
    assert len(list((tmp_path / "s").glob("*.ply"))) == 2


def test_generate_steers_with_a_wider_attribute_tolerance(tmp_path):
    """``--tolerance`` widens the reward's attribute likelihoods (its spread is tolerance × the attribute's
    training standard deviation); a non-positive one is a one-line usage error that writes nothing."""
    config = ShapeGenerationConfig(particles=2, tolerance=0.5)
    generator = ShapeGenerator.load(config, device="cpu")
    assert torch.allclose(generator.reward.spread, 0.5 * generator.controlled.conditions.scale)
    assert generator.class_models == {}  # SMC's proposal is the general model: the class models are not read
    result = CliRunner().invoke(main, ["generate", "--class", "chair", "--attr", "chair_back_height=0.6", "-n", "1",
                                       "--particles", "2", "--steps", "2", "--points", "64", "--tolerance", "0.5",
                                       "--out", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["tolerance"] == 0.5
    assert summary["method"] == "smc, 2 particles, prior proposal, attribute tolerance 0.5, best particle"
    bad = CliRunner().invoke(main, ["generate", "--class", "chair", "--attr", "chair_back_height=0.6", "--particles",
                                    "2", "--tolerance", "0", "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "--tolerance" in bad.output and not (tmp_path / "t").exists()


def test_generate_steers_towards_a_sharper_tilt_and_draws_by_the_final_weights(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--class", "chair", "-n", "1", "--particles", "2", "--steps", "2",
                                       "--points", "64", "--temperature", "0.25", "--pick", "sample",
                                       "--out", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["method"] == "smc, 2 particles, prior proposal, temperature 0.25"
    assert summary["temperature"] == 0.25 and summary["pick"] == "sample"
    bad = CliRunner().invoke(main, ["generate", "--class", "chair", "--particles", "2", "--pick", "mode",
                                    "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "'--pick': 'mode' is not one of 'sample', 'best'" in bad.output
    bad = CliRunner().invoke(main, ["generate", "--class", "chair", "--particles", "2", "--temperature", "0",
                                    "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "--temperature" in bad.output and not (tmp_path / "t").exists()


def test_a_class_with_a_model_of_its_own_is_drawn_by_it(tmp_path, weights):
    """A model of one class (``train control --target-classes``) draws the targets of its class, alone or with
    attributes, the general model every other target; each model is checked against the general one, and refuses
    targets of another class."""
    from common.weights import WeightsError
    from shapectrl.control import ControlledShapes, with_class_models

    general_path, _ = weights
    general = ControlledShapes.load(general_path)
    chair = copy.deepcopy(general.model)  # a copy of the general network ...
    torch.nn.init.normal_(chair.denoiser.cond_embed.weight)  # ... that draws other clouds
    save_tree(controlled_export(chair, general.conditions, ShapeControlConfig(p_class=1.0, target_classes=("chair",)),
                                {}), tmp_path / "chair.safetensors")
    own = with_class_models(general, {"chair": tmp_path / "chair.safetensors"})
    generator = ShapeGenerator(general, ShapeGenerationConfig(redraw=0, points=32, steps=3, precision="fp32"),
                               general_path, class_models={"chair": (own["chair"], tmp_path / "chair.safetensors")})
    by_own, by_general = (generator.sample(cls, n=2, seed=0) for cls in ("chair", "table"))
    assert by_own.model == tmp_path / "chair.safetensors" and by_own.description == "rgdm, the chair model"
    assert str(by_general.model) == general_path and by_general.description == "rgdm"
    assert generator.sample("chair", {"height": 0.6}, n=2, seed=0).model == tmp_path / "chair.safetensors"
    assert str(generator.sample(None, {"height": 0.6}, n=2, seed=0).model) == general_path
    plain = ShapeGenerator(general, generator.config, general_path).sample("chair", n=2, seed=0)
    assert not torch.allclose(plain.clouds, by_own.clouds)
    with pytest.raises(ValueError, match="trained for targets of class chair alone"):
        own["chair"].sample(*(v.unsqueeze(0) for v in general.conditions.target("table")), n_points=8, n_sampling_steps=1)
    with pytest.raises(WeightsError, match="chair.safetensors: trained for targets of chair, not of table alone"):
        with_class_models(general, {"table": tmp_path / "chair.safetensors"})
    with pytest.raises(WeightsError, match="model.safetensors: trained for targets of every class, not of chair alone"):
        with_class_models(general, {"chair": general_path})
    other = ShapeConditions(CLASSES, general.conditions.attributes, general.conditions.mean + 1, general.conditions.scale)
    save_tree(controlled_export(chair, other, ShapeControlConfig(p_class=1.0, target_classes=("chair",)), {}),
              tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="its conditions .* differ from the model of the other targets"):
        with_class_models(general, {"chair": tmp_path / "other.safetensors"})
