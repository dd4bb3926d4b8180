"""``shapectrl generate`` (files, contact sheet, summary, clear errors), the contact sheet and the
shipped-weights lookup; tiny models built in temporary folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.weights import save_tree
from shapectrl.classifier import ShapeClassifier, ShapeClassifierConfig
from shapectrl.cli import main
from shapectrl.conditions import ShapeConditions
from shapectrl.control import ControlConfig, ShapePool, controlled_export
from shapectrl.data.normalisation import Normalisation
from shapectrl.io import read_ply
from shapectrl.prior import ShapeDiffusion, ShapePriorConfig
from shapectrl.render import contact_sheet
from shapectrl.weights import DEFAULT_MODELS, WEIGHTS_DIR, weight_path

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
    save_tree(controlled_export(prior.with_condition(conditions.cond_dim), conditions, ControlConfig(), {}),
               folder / "model.safetensors")
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
    plys = sorted(out.glob("*.ply"))
    assert [p.name for p in plys] == ["sample_0000.ply", "sample_0001.ply", "sample_0002.ply"]
    assert read_ply(plys[0]).shape == (64, 3)
    assert (out / "contact_sheet.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in saved.items() if k != "samples"} == printed
    assert len(saved["samples"]) == 3 and saved["samples"][0]["file"] == "sample_0000.ply"
    assert saved["samples"][0]["class"] in CLASSES and set(saved["samples"][0]["attributes"]) == {"chair_back_height", "height"}


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
])
def test_generate_rejects_bad_targets(tmp_path, weights, args, message):
    result = _run(weights, tmp_path / "gen", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "gen").exists()


def test_generate_refuses_existing_outputs_before_sampling(tmp_path, weights):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "contact_sheet.png").write_bytes(b"old")
    result = _run(weights, out, "--class", "table")
    assert result.exit_code == 2 and "contact_sheet.png already exists" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png"]
    assert _run(weights, out, "--class", "table", "--overwrite").exit_code == 0
    assert (out / "contact_sheet.png").read_bytes()[:8] == PNG_MAGIC


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
    shipped = WEIGHTS_DIR / DEFAULT_MODELS["rgdm"]
    if shipped.exists():
        assert weight_path(DEFAULT_MODELS["rgdm"]) == shipped
    else:
        with pytest.raises(FileNotFoundError, match=str(shipped)):
            weight_path(DEFAULT_MODELS["rgdm"])


def test_conditional_benchmark_scores_a_controlled_model(tmp_path) -> None:
    from benchmarks.shapes_conditional import main as benchmark
    from shapectrl.data.families import CLASSES as ALL

    torch.manual_seed(0)
    normalisation = Normalisation((0.0, 0.1, 0.0), 0.4)
    prior = ShapeDiffusion(ShapePriorConfig(width=16, depth=1, resolution=4, voxel_channels=4, n_steps=20),
                           normalisation=normalisation, classes=ALL)
    conditions = ShapeConditions(ALL, ("height", "chair_back_height"), torch.tensor([0.6, 0.4]), torch.tensor([0.3, 0.2]))
    model_path, evaluator_path = tmp_path / "model.safetensors", tmp_path / "evaluator.safetensors"
    save_tree(controlled_export(prior.with_condition(conditions.cond_dim), conditions, ControlConfig(), {}), model_path)
    evaluator = ShapeClassifier(ShapeClassifierConfig(arch="dgcnn", widths=(8, 8), embed=16, head_hidden=8), normalisation)
    save_tree(evaluator.export(), evaluator_path)
    out = tmp_path / "record.json"
    prior_path, pool_path = tmp_path / "prior.safetensors", tmp_path / "pool.safetensors"
    save_tree(prior.export(), prior_path)
    ShapePool(torch.randn(7, 32, 3), torch.randn(7, len(ALL) + 2), 2, 1.0).save(pool_path)
    result = CliRunner().invoke(benchmark, ["--method", f"rgdm={model_path}", "--evaluator", str(evaluator_path),
                                            "--prior", str(prior_path), "--best-of-pool", str(pool_path),
                                            "-n", "3", "--points", "32", "--steps", "2", "--data-dir", str(tmp_path),
                                            "--attribute", "chair:chair_back_height", "--threads", "1",
                                            "--smc", "2:rgdm", "--reward", str(evaluator_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    data, blind, best, rgdm, steered = record["rows"]
    assert steered["row"] == "SMC, K = 2, rgdm proposal" and steered["network_calls_per_cloud"] > 0
    assert set(steered["classes"]) == {"airplane", "chair", "car"}
    assert record["attributes"]["SMC, K = 2, rgdm proposal"][0]["mae_composed"] >= 0
    assert blind["row"] == "prior (no control)" and best["row"] == "best-of-2 (prior pool)"
    assert data["row"] == "data (valid split)" and rgdm["row"] == "rgdm"
    for row in (data, blind, best, rgdm):
        assert set(row["classes"]) == {"airplane", "chair", "car"}
        assert 0.0 <= row["mean"]["1nna-cd"] <= 1.0 and 0.0 <= row["mean"]["accuracy"] <= 1.0
    (attribute,) = record["attributes"]["rgdm"]
    assert attribute["attribute"] == "chair_back_height" and attribute["mae_composed"] >= 0
    classes_only = CliRunner().invoke(benchmark, ["--method", f"rgdm={model_path}", "--evaluator", str(evaluator_path),
                                                  "-n", "2", "--points", "32", "--steps", "1", "--data-dir",
                                                  str(tmp_path), "--no-attributes", "--threads", "1"])
    assert classes_only.exit_code == 0, classes_only.output
    assert json.loads(classes_only.stdout)["attributes"] == {}


def test_best_of_pool_keeps_the_highest_reward_cloud_of_disjoint_groups() -> None:
    from benchmarks.shapes_conditional import _best_of_pool

    k = torch.arange(7.0)
    scores = torch.stack([k, -k], dim=1)  # class "a" prefers high indices, "b" low ones
    pool = ShapePool(k.view(7, 1, 1).expand(7, 4, 3).clone(), scores, 2, 0.0)
    draw, group = _best_of_pool(pool, ("a", "b"), n=3, seed=0)
    assert group == 2
    for cls, k_seed in (("a", 0), ("b", 1)):
        picks = draw(cls, k_seed)[:, 0, 0].long()
        order = torch.randperm(7, generator=torch.Generator().manual_seed(k_seed))[:6].view(3, 2)
        expected = order.max(1).values if cls == "a" else order.min(1).values
        assert torch.equal(picks, expected)


def test_seed_aggregation_gives_means_spreads_and_paired_differences(tmp_path) -> None:
    from benchmarks.shapes_seeds import KEYS
    from benchmarks.shapes_seeds import main as aggregate

    paths = []
    for seed, (a, b) in enumerate([(0.80, 0.70), (0.90, 0.76), (0.70, 0.64)]):
        rows = [{"row": name, "mean": {k: v for k in KEYS}} for name, v in (("cond", a), ("rgdm", b))]
        record = {"seed": seed, "samples_per_class": 32, "points": 512, "sampling_steps": 50, "guidance_scale": 1.0,
                  "rows": rows}
        paths.append(tmp_path / f"r{seed}.json")
        paths[-1].write_text(json.dumps(record))
    result = CliRunner().invoke(aggregate, [*map(str, paths), "--baseline", "cond"])
    assert result.exit_code == 0, result.output
    cond, rgdm = json.loads(result.stdout)["rows"]
    assert cond["over_seeds"]["1nna-cd"] == {"mean": 0.8, "sd": 0.1} and "minus_baseline" not in cond
    diff = rgdm["minus_baseline"]["1nna-cd"]  # paired: -0.10, -0.14, -0.06
    assert diff["mean"] == pytest.approx(-0.1) and diff["se"] == pytest.approx(0.04 / np.sqrt(3), abs=1e-5)
    record = json.loads(paths[2].read_text())
    record["points"] = 2048
    paths[2].write_text(json.dumps(record))
    mixed = CliRunner().invoke(aggregate, list(map(str, paths)))
    assert mixed.exit_code == 2 and "differ in samples, points, steps or guidance" in mixed.output


def test_generate_steers_particles_from_the_shipped_prior(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--class", "chair", "--attr", "chair_back_height=0.6", "-n", "2",
                                       "--particles", "4", "--steps", "3", "--points", "64", "--out", str(tmp_path / "s"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["particles"] == 4 and summary["network_calls_per_cloud"] == 4 * 4 and 1 <= summary["mean_ess"] <= 4
    assert summary["method"] == "smc, 4 particles, prior proposal" and summary["guidance_scale"] is None
    assert len(list((tmp_path / "s").glob("*.ply"))) == 2
