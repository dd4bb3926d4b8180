"""The benchmark commands: each runs end to end on tiny models and writes the record its docs promise."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.control import controlled_export
from common.weights import save_tree
from molctrl.io import read_molecules
from shapectrl.classifier import ShapeClassifier, ShapeClassifierConfig
from shapectrl.conditions import ShapeConditions
from shapectrl.control import ShapeControlConfig, ShapePool
from shapectrl.data.normalisation import Normalisation
from shapectrl.prior import ShapeDiffusion, ShapePriorConfig


def test_conditional_benchmark_scores_methods_by_the_edm_protocol(weight_files, conditioned_model, tmp_path):
    from benchmarks.qm9_conditional import main as benchmark

    predictor = str(weight_files / "predictor.safetensors")
    result = CliRunner().invoke(benchmark, ["--method", f"ctrl={conditioned_model}", "--guidance", predictor,
                                            "--prior", str(weight_files / "prior.safetensors"), "--evaluator", predictor,
                                            "--property", "alpha", "--property", "mu", "-n", "4", "--steps", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    rows = {r["row"]: r for r in record["rows"]}
    assert list(rows) == ["#Atoms", "U-bound (egnn)", "L-bound (egnn)", "ctrl", "reconstruction guidance (egnn)"]
    assert set(rows["ctrl"]["mae"]) == {"alpha", "mu"} and 0 <= rows["ctrl"]["validity"] <= 1
    assert rows["ctrl"]["train_steps"] == 1 and rows["ctrl"]["train_seconds"] >= 0  # from the model file
    assert rows["#Atoms"]["mae"]["alpha"] == pytest.approx(5.38, abs=0.01)  # from the qm9_predictors record
    late = CliRunner().invoke(benchmark, ["--guidance", predictor, "--guidance-window", "25:50", "--references", "",
                                          "--prior", str(weight_files / "prior.safetensors"), "--evaluator", predictor,
                                          "--property", "mu", "-n", "2", "--steps", "2"])
    assert late.exit_code == 0, late.output
    assert json.loads(late.stdout)["rows"][0]["window"] == [25, 50]
    judged = CliRunner().invoke(benchmark, ["--method", f"ctrl={conditioned_model}", "--references", "", "--physics",
                                            "--evaluator", predictor, "--property", "mu", "-n", "2", "--steps", "2",
                                            "--samples", str(tmp_path)])
    assert judged.exit_code == 0, judged.output
    floor, ctrl = json.loads(judged.stdout)["rows"]
    assert floor["row"] == "GFN2-xTB L-bound" and 0.2 < floor["physics_mae"]["mu"] < 1.0  # the calibration record
    assert set(ctrl["physics_mae"]) == {"mu"} and ctrl["physics_judged"]["mu"] <= 2
    assert len(read_molecules(tmp_path / "ctrl_mu.sdf")) == 2
    bad = CliRunner().invoke(benchmark, ["--guidance", predictor, "--guidance-window", "150:0"])
    assert bad.exit_code == 2 and "expected LO:HI" in bad.output, bad.output


def test_shared_pool_gives_each_output_of_a_property_its_own_candidates(weight_files) -> None:
    from collections import Counter

    from benchmarks.qm9_conditional import protocol_targets, shared_pool_best_of
    from molctrl.conditions import PropertyConditions
    from molctrl.data.qm9 import load_split
    from molctrl.predictor import likelihood_reward
    from molctrl.weights import load_predictor, load_prior

    prior, predictor = load_prior(weight_files / "prior.safetensors").eval(), load_predictor(weight_files / "predictor.safetensors")
    conditions = PropertyConditions.from_split(load_split("qm9-noh", "Db"))
    reward = likelihood_reward(predictor, predictor.properties, prior.config.type_scale)
    properties, n = ("alpha", "gap"), 6
    drawn = {p: protocol_targets(conditions, p, n, seed=0) for p in properties}
    need = Counter()
    for n_atoms, *_ in drawn.values():
        for size, count in Counter(n_atoms.tolist()).items():
            need[size] = max(need[size], count)
    sample, record = shared_pool_best_of(1, prior, reward, conditions, properties, n, 0, steps=2)
    assert record["pool_size"] == sum(need.values()) and record["network_calls_per_molecule"] == 3
    assert record["network_calls_per_molecule_shared"] == pytest.approx(3 * sum(need.values()) / (n * 2), abs=0.005)
    # with one candidate each, the j-th target of size N of every property gets the pool's j-th molecule of that size
    picked = {p: [m.positions.tobytes() for m in sample(*drawn[p][1:3], drawn[p][0], None)] for p in properties}
    for p in properties:
        assert len(set(picked[p])) == n  # no two outputs of a property share a candidate
    rank = {p: [Counter(drawn[p][0][:i + 1].tolist())[s] for i, s in enumerate(drawn[p][0].tolist())] for p in properties}
    for i, (size, j) in enumerate(zip(drawn["alpha"][0].tolist(), rank["alpha"])):
        for k, (other, jj) in enumerate(zip(drawn["gap"][0].tolist(), rank["gap"])):
            assert (picked["alpha"][i] == picked["gap"][k]) == (size == other and j == jj)


@pytest.mark.parametrize("spec, name", [("16:prior:0.25", "SMC, K = 16, prior proposal, τ = 0.25"),
                                        ("4:prior:1:plain:every3", "SMC, K = 4, prior proposal, plain potential, "
                                                                  "potential every 3 steps"),
                                        ("16:prior:0.002:from200", "SMC, K = 16, prior proposal, τ = 0.002, "
                                                                   "potential from t = 200"),
                                        ("16:prior:0.25:best", "SMC, K = 16, prior proposal, τ = 0.25, "
                                                               "output: the best particle")])
def test_smc_row_specs_name_their_flags(spec, name):
    from benchmarks.qm9_conditional import steered_sampler

    assert steered_sampler(spec, None, None, None, 2)[0] == name  # the spec is read before anything is sampled


@pytest.mark.parametrize("judge, properties, judge_reward, label", [
    ("both", ["gap", "mu"], None, "model and xtb"), ("both", ["alpha", "Cv"], None, "model"),
    ("both", ["alpha", "Cv"], "wide", "wide"), ("both", ["alpha", "gap"], "wide", "wide and xtb"),
    ("xtb", ["gap"], None, "xtb"), ("model", ["gap"], "wide", "wide")])
def test_row_names_say_what_the_final_weights_read(judge, properties, judge_reward, label):
    from benchmarks.qm9_conditional import judge_label

    assert judge_label(judge, properties, judge_reward) == label  # xTB judges no alpha or Cv target


@pytest.mark.parametrize("spec", ["16:prior:0.25:every0", "16:prior:0.25:often", "16:prior:0.25:from0"])
def test_bad_smc_flags_get_one_line_errors(spec):
    import click

    from benchmarks.qm9_conditional import steered_sampler

    with pytest.raises(click.BadParameter, match="expected flags 'plain', 'best', 'everyM' .* or 'fromT'"):
        steered_sampler(spec, None, None, None, 2)


@pytest.mark.parametrize("spec", ["16:prior:0", "16:prior:warm", "0:prior", "x:prior", "16:prior:1:worst",
                                  "16:prior:1:best:best"])
def test_bad_shape_smc_specs_get_one_line_errors(spec):
    import click

    from benchmarks.shapes_conditional import _steered

    with pytest.raises(click.BadParameter, match="expected K:PROPOSAL\\[:TAU\\[:best\\]\\] with K ≥ 1 and TAU > 0"):
        _steered(spec, {}, None, "reward.safetensors", None, 32, 2, 1.0, None, "fp32")  # read before anything is loaded


def test_conditional_benchmark_scores_a_controlled_model(tmp_path) -> None:
    from benchmarks.shapes_conditional import main as benchmark
    from shapectrl.data.families import CLASSES as ALL

    torch.manual_seed(0)
    normalisation = Normalisation((0.0, 0.1, 0.0), 0.4)
    prior = ShapeDiffusion(ShapePriorConfig(width=16, depth=1, resolution=4, voxel_channels=4, n_steps=20),
                           normalisation=normalisation, classes=ALL)
    conditions = ShapeConditions(ALL, ("height", "chair_back_height"), torch.tensor([0.6, 0.4]), torch.tensor([0.3, 0.2]))
    model_path, evaluator_path = tmp_path / "model.safetensors", tmp_path / "evaluator.safetensors"
    save_tree(controlled_export(prior.with_condition(conditions.cond_dim), conditions, ShapeControlConfig(), {}), model_path)
    evaluator = ShapeClassifier(ShapeClassifierConfig(arch="dgcnn", widths=(8, 8), embed=16, head_hidden=8), normalisation)
    save_tree(evaluator.export(), evaluator_path)
    out = tmp_path / "record.json"
    prior_path, pool_path = tmp_path / "prior.safetensors", tmp_path / "pool.safetensors"
    save_tree(prior.export(), prior_path)
    ShapePool(torch.randn(7, 32, 3), torch.randn(7, len(ALL) + 2), 2, 1.0).save(pool_path)
    result = CliRunner().invoke(benchmark, ["--method", f"rgdm={model_path}", "--evaluator", str(evaluator_path),
                                            "--prior", str(prior_path), "--best-of-pool", str(pool_path),
                                            "--prior-in-class", "2", "-n", "3", "--points", "32", "--steps", "2", "--data-dir", str(tmp_path),
                                            "--attribute", "chair:chair_back_height", "--threads", "1",
                                            "--smc", "2:rgdm:0.5", "--reward", str(evaluator_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    data, blind, in_class, best, rgdm, steered = record["rows"]
    assert in_class["row"] == "prior, off-class clouds redrawn (≤ 2 times)"
    for cls, scores in in_class["classes"].items():  # the check is the evaluator here: refused clouds are its misses
        assert 0 <= in_class["extra_draws"][cls] <= 3 * 2
        assert scores["accuracy"] == pytest.approx(1 - in_class["never_accepted"][cls] / 3, abs=1e-4)
    assert steered["row"] == "SMC, K = 2, rgdm proposal, τ = 0.5" and steered["network_calls_per_cloud"] > 0
    assert set(steered["classes"]) == {"airplane", "chair", "car"}
    assert record["attributes"]["SMC, K = 2, rgdm proposal, τ = 0.5"][0]["mae_composed"] >= 0
    assert blind["row"] == "prior (no control)" and best["row"] == "best-of-2 (prior pool)"
    assert data["row"] == "data (valid split)" and rgdm["row"] == "rgdm"
    for row in (data, blind, in_class, best, rgdm):
        assert set(row["classes"]) == {"airplane", "chair", "car"}
        assert 0.0 <= row["mean"]["1nna-cd"] <= 1.0 and 0.0 <= row["mean"]["accuracy"] <= 1.0
    (attribute,) = record["attributes"]["rgdm"]
    assert attribute["attribute"] == "chair_back_height" and attribute["mae_composed"] >= 0
    classes_only = CliRunner().invoke(benchmark, ["--method", f"rgdm={model_path}", "--evaluator", str(evaluator_path),
                                                  "-n", "2", "--points", "32", "--steps", "1", "--data-dir",
                                                  str(tmp_path), "--no-attributes", "--threads", "1",
                                                  "--emd-points", "0", "--precision", "bf16", "--no-data-row",
                                                  "--redraw", "2", "--reward", str(evaluator_path)])
    assert classes_only.exit_code == 0, classes_only.output
    no_prior = CliRunner().invoke(benchmark, ["--method", f"rgdm={model_path}", "--prior-in-class", "2"])
    assert no_prior.exit_code == 2 and "needs --prior" in no_prior.output
    record = json.loads(classes_only.stdout)
    assert record["attributes"] == {} and record["precision"] == "bf16" and record["emd_points"] == 0
    (only,) = record["rows"]
    assert only["row"] == "rgdm, off-class clouds redrawn (≤ 2 times)" and record["redraw"] == 2
    assert "1nna-cd" in only["mean"] and "1nna-emd" not in only["mean"]
    assert set(only["extra_draws"]) == {"airplane", "chair", "car"}
    assert all(0 <= extra <= 2 * 2 for extra in only["extra_draws"].values())  # 2 clouds, at most 2 redraws each
    for cls in ("airplane", "chair", "car", "lamp"):  # one prior per class, as `train prior --classes CLS` makes them
        save_tree(ShapeDiffusion(prior.config, normalisation, (cls,)).export(), tmp_path / f"{cls}.safetensors")
    base = ["--method", f"rgdm={model_path}", "--evaluator", str(evaluator_path), "-n", "2", "--points", "32",
            "--steps", "1", "--data-dir", str(tmp_path), "--no-attributes", "--no-data-row", "--threads", "1"]
    per_class = [f"--class-prior={cls}={tmp_path / cls}.safetensors" for cls in ("airplane", "chair", "car")]
    result = CliRunner().invoke(benchmark, [*base, *per_class])
    assert result.exit_code == 0, result.output
    own, _ = json.loads(result.stdout)["rows"]
    assert own["row"] == "one prior per class" and set(own["classes"]) == {"airplane", "chair", "car"}
    assert own["models"]["car"].endswith("car.safetensors")
    missing = CliRunner().invoke(benchmark, [*base, *per_class[:2]])
    assert missing.exit_code == 2 and "no prior for car" in missing.output
    swapped = CliRunner().invoke(benchmark, [*base, *per_class[:2], f"--class-prior=car={tmp_path / 'lamp'}.safetensors"])
    assert swapped.exit_code == 2 and "lamp.safetensors: trained on lamp, not on car alone" in swapped.output
    # one controlled model per class (train control --target-classes CLASS) draws its class's targets, alone or with
    # an attribute; the other targets (an attribute alone) are the general model's
    for cls in ("chair", "car"):
        config = ShapeControlConfig(p_class=1.0, target_classes=(cls,))
        save_tree(controlled_export(prior.with_condition(conditions.cond_dim), conditions, config, {}),
                  tmp_path / f"rgdm-{cls}.safetensors")
    routed = f"rgdm={model_path},chair={tmp_path / 'rgdm-chair'}.safetensors,car={tmp_path / 'rgdm-car'}.safetensors"
    base[1] = routed
    both = CliRunner().invoke(benchmark, [arg for arg in base if arg != "--no-attributes"]
                              + ["--attribute", "chair:chair_back_height"])
    assert both.exit_code == 0, both.output
    record = json.loads(both.stdout)
    (row,) = record["rows"]
    assert set(row["class_models"]) == {"chair", "car"} and row["class_models"]["car"]["model"].endswith("rgdm-car.safetensors")
    assert record["attributes"]["rgdm"][0]["mae_composed"] >= 0
    for spec, message in ((f"rgdm={model_path},chair={tmp_path / 'rgdm-car'}.safetensors",
                           "rgdm-car.safetensors: trained for targets of car, not of chair alone"),
                          (f"rgdm={model_path},boat={tmp_path / 'rgdm-car'}.safetensors", "'boat' is not a class of")):
        base[1] = spec
        wrong = CliRunner().invoke(benchmark, base)
        assert wrong.exit_code != 0 and message in wrong.output, wrong.output


def test_main_job_runs_shapectrl_generate_at_its_defaults(tmp_path) -> None:
    from benchmarks.main_job import main as main_job

    out = tmp_path / "record.json"
    result = CliRunner().invoke(main_job, ["--shapes", "--class", "chair", "--class", "car", "-n", "2", "--threads", "1",
                                           "--extra", "--steps 2 --points 64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    chair, car = json.loads(out.read_text())["runs"]
    assert chair["target"] == {"class": "chair", "attributes": {}} and car["target"]["class"] == "car"
    assert chair["command"].startswith("shapectrl generate --class chair -n 2 --seed 0 --out clouds")
    assert chair["clouds"] == 2 and chair["points"] == 64 and 0 <= chair["class_accuracy"] <= 1


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
        rows = [{"row": name, "mean": {k: v for k in KEYS},
                 "classes": {"chair": {k: v - 0.1 for k in KEYS}, "car": {k: v + 0.1 for k in KEYS}}}
                for name, v in (("cond", a), ("rgdm", b))]
        attributes = {"rgdm": [{"class": "chair", "attribute": "chair_back_height", "targets": 32,
                                "mae_composed": b / 10, "accuracy_composed": 1.0}]}
        record = {"seed": seed, "samples_per_class": 32, "points": 512, "sampling_steps": 50, "guidance_scale": 1.0,
                  "rows": rows, "attributes": attributes}
        paths.append(tmp_path / f"r{seed}.json")
        paths[-1].write_text(json.dumps(record))
    result = CliRunner().invoke(aggregate, [*map(str, paths), "--baseline", "cond"])
    assert result.exit_code == 0, result.output
    (back,) = json.loads(result.stdout)["attributes"]["rgdm"]  # attribute errors averaged over the seeds
    assert back["mae_composed"] == pytest.approx(0.07) and back["targets"] == 32 and back["class"] == "chair"
    cond, rgdm = json.loads(result.stdout)["rows"]
    assert cond["over_seeds"]["1nna-cd"] == {"mean": 0.8, "sd": 0.1} and "minus_baseline" not in cond
    assert cond["per_class"]["chair"]["1nna-cd"] == pytest.approx(0.7) and rgdm["per_class"]["car"]["accuracy"] == 0.8
    diff = rgdm["minus_baseline"]["1nna-cd"]  # paired: -0.10, -0.14, -0.06
    assert diff["mean"] == pytest.approx(-0.1) and diff["se"] == pytest.approx(0.04 / np.sqrt(3), abs=1e-5)
    record = json.loads(paths[2].read_text())
    record["attributes"]["rgdm"][0]["attribute"] = "chair_seat_height"
    paths[2].write_text(json.dumps(record))
    other = CliRunner().invoke(aggregate, list(map(str, paths)))
    assert other.exit_code == 2 and "attribute rows differ" in other.output
    record["points"] = 2048
    paths[2].write_text(json.dumps(record))
    mixed = CliRunner().invoke(aggregate, list(map(str, paths)))
    assert mixed.exit_code == 2 and "differ in samples, points, steps, guidance or redraw" in mixed.output


def test_seed_aggregation_pairs_two_settings_by_seed_and_keeps_the_metrics_both_have(tmp_path) -> None:
    from benchmarks.shapes_seeds import main as aggregate

    def write(name: str, seed: int, steps: int, value: float):
        record = {"seed": seed, "samples_per_class": 32, "points": 2048, "sampling_steps": steps, "guidance_scale": 2,
                  "rows": [{"row": "rgdm", "mean": (mean := {"accuracy": 1.0, "1nna-cd": value, "mmd-cd": 0.05}),
                            "classes": {"car": mean}}]}
        (tmp_path / name).write_text(json.dumps(record))
        return str(tmp_path / name)

    fast = [write(f"25_{s}.json", s, 25, v) for s, v in enumerate((0.78, 0.80, 0.76))]
    slow = [write(f"50_{s}.json", s, 50, v) for s, v in enumerate((0.79, 0.78, 0.77))]
    result = CliRunner().invoke(aggregate, [*fast, *(x for path in slow for x in ("--versus", path))])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    assert set(row["over_seeds"]) == {"accuracy", "1nna-cd", "mmd-cd"}  # no EMD in a Chamfer-only record
    diff = row["minus_versus"]["1nna-cd"]  # paired: -0.01, +0.02, -0.01
    assert diff["mean"] == pytest.approx(0.0, abs=1e-9) and diff["se"] == pytest.approx(0.01, abs=1e-5)
    shuffled = CliRunner().invoke(aggregate, [*fast, "--versus", slow[1], "--versus", slow[0], "--versus", slow[2]])
    assert shuffled.exit_code == 2 and "same seeds in the same order" in shuffled.output
    for path in fast:  # a row named for its setting is paired with the --versus row named
        record = json.loads(Path(path).read_text())
        record["rows"][0]["row"] = "rgdm, 25 steps"
        Path(path).write_text(json.dumps(record))
    versus = [x for path in slow for x in ("--versus", path)]
    (named,) = json.loads(CliRunner().invoke(aggregate, [*fast, *versus, "--versus-row", "rgdm"]).stdout)["rows"]
    assert named["minus_versus"]["1nna-cd"] == diff
    unknown = CliRunner().invoke(aggregate, [*fast, *versus, "--versus-row", "cond"])
    assert unknown.exit_code == 2 and "no row 'cond' in the --versus records (rows: rgdm)" in unknown.output


def test_maximize_benchmark_records_its_solver_and_costs(tmp_path) -> None:
    from benchmarks.qm9_maximize import main as benchmark

    out = tmp_path / "record.json"
    result = CliRunner().invoke(benchmark, ["--score", "qed", "-n", "3", "--steps", "2", "--solver", "dpm2", "--threads",
                                            "1", "--smc", "2:prior:0.005", "--best-of", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    prior, steered, best = record["rows"]
    assert record["solver"] == "dpm2" and prior["row"] == "prior" and best["row"] == "best of 2 prior samples"
    assert prior["network_calls_per_molecule"] == 3 and best["network_calls_per_molecule"] == 6
    assert steered["network_calls_per_molecule"] > 0 and 0 < prior["mean_qed"] < 1


def test_gradient_noise_summary_separates_signal_from_noise() -> None:
    from benchmarks.ctrl_gradient_noise import noise_summary

    g = torch.tensor([[2.0, 1.0], [2.0, -1.0], [2.0, 1.0], [2.0, -1.0]])  # mean (2, 0); each batch ±1 off it
    summary = noise_summary(g, batch_size=8)
    assert summary["noise_per_batch"] == pytest.approx(4 / 3)  # Σ‖g_b − ḡ‖² / (R − 1)
    assert summary["signal_squared"] == pytest.approx(4 - 1 / 3)  # ‖ḡ‖² − σ²/R
    assert summary["snr_per_batch"] == pytest.approx(2.75, abs=1e-4)
    assert summary["batch_size_for_snr_1"] == pytest.approx(8 / 2.75, abs=0.05)
    assert noise_summary(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), 8)["batch_size_for_snr_1"] is None  # no signal left


def test_recorded_commands_rerun_as_they_ran(monkeypatch):
    import shlex
    import sys

    from benchmarks.record import command_line

    argv = ["--references", "", "--smc", "16:prior:0.25:best", "--out", "results/a b.json"]
    monkeypatch.setattr(sys, "argv", ["qm9_conditional.py", *argv])
    assert shlex.split(command_line("benchmarks.qm9_conditional")) == ["python", "-m", "benchmarks.qm9_conditional", *argv]
