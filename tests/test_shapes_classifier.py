"""Shape classifiers: order invariance, any N, kNN graphs, calibration, the noise-aware option,
export, and ``shapectrl train classifier``."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from common.weights import save_tree
from shapectrl.classifier import (
    CLASSIFIER_ARCHITECTURES,
    ShapeClassifier,
    ShapeClassifierConfig,
)
from shapectrl.cli import main
from shapectrl.data.normalisation import Normalisation
from shapectrl.data.procedural import ProceduralShapes
from shapectrl.networks import gather_neighbours, knn_indices, neighbourhood_max
from shapectrl.prior import ShapeBatches

torch.set_num_threads(1)


def _classifier(arch: str, **kw) -> ShapeClassifier:
    torch.manual_seed(0)
    config = ShapeClassifierConfig(arch=arch, classes=("airplane", "chair", "table"), **kw)
    return ShapeClassifier(config, Normalisation((0.0, 0.1, 0.0), 0.5))


@pytest.mark.parametrize("arch", CLASSIFIER_ARCHITECTURES)
def test_classifier_is_invariant_to_point_order(arch: str) -> None:
    model = _classifier(arch).eval()
    points = torch.randn(4, 300, 3)
    perm = torch.randperm(300)
    out = model.predict_log_probs(points)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    torch.testing.assert_close(model.predict_log_probs(points[:, perm]), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", CLASSIFIER_ARCHITECTURES)
def test_classifier_runs_on_any_number_of_points(arch: str) -> None:
    model = _classifier(arch).eval()
    for n in (1, 5, 700):
        assert model.predict_log_probs(torch.randn(2, n, 3)).shape == (2, 3)
    points = torch.randn(1, 200, 3, requires_grad=True)
    model.predict_log_probs(points)[0, 1].backward()  # differentiable in the points (a reward gradient)
    assert torch.isfinite(points.grad).all() and points.grad.abs().sum() > 0


def test_dgcnn_neighbourhood_grows_with_the_cloud() -> None:
    encoder = _classifier("dgcnn").encoder
    assert [encoder.n_neighbours(n) for n in (3, 256, 1024, 2048)] == [3, 4, 16, 32]


def test_knn_matches_brute_force_and_neighbourhood_max() -> None:
    points = torch.randn(2, 40, 3)
    idx = knn_indices(points, 5)
    d = torch.cdist(points, points)
    expected = d.topk(5, largest=False).indices
    assert torch.equal(idx[..., 0], torch.arange(40).expand(2, 40))  # each point first
    assert torch.equal(idx.sort(-1).values, expected.sort(-1).values)
    features = torch.randn(2, 40, 6, requires_grad=True)
    out = neighbourhood_max(features, idx)
    torch.testing.assert_close(out, gather_neighbours(features, idx).amax(2))
    out.sum().backward()
    assert features.grad.sum() == out.numel()  # one winner per output entry


def test_knn_among_reference_points_matches_brute_force() -> None:
    """Neighbours of 50 query points among 20 others: indices into the 20, nearest first; a max over them
    reads the reference's features."""
    points, reference = torch.randn(2, 50, 3), torch.randn(2, 20, 3)
    idx = knn_indices(points, 4, reference)
    assert idx.shape == (2, 50, 4) and int(idx.max()) < 20
    expected = torch.cdist(points, reference).topk(4, largest=False).indices
    assert torch.equal(idx, expected)
    features = torch.randn(2, 20, 6, requires_grad=True)
    out = neighbourhood_max(features, idx)
    assert out.shape == (2, 50, 6)
    torch.testing.assert_close(out, gather_neighbours(features, idx).amax(2))
    assert knn_indices(points, 30, reference).shape == (2, 50, 20)  # k capped at the reference's size
    with torch.autocast("cpu", dtype=torch.bfloat16):  # distances stay float32: the same neighbours
        assert torch.equal(knn_indices(3.0 + 0.05 * points, 4, 3.0 + 0.05 * reference), expected)


def test_calibration_fits_a_temperature_that_lowers_the_nll() -> None:
    model = _classifier("pointnet")
    points = torch.randn(60, 64, 3)
    labels = torch.randint(0, 3, (60,))
    scores = model.calibrate(points, labels)
    assert scores["nll_calibrated"] <= scores["nll"] + 1e-6
    assert model.temperature == pytest.approx(scores["temperature"], rel=1e-4)
    assert model.training  # calibration leaves the mode as it was


def test_noise_aware_classifier_reads_the_time() -> None:
    model = _classifier("pointnet", noise_schedule="linear", noise_steps=100)
    points, labels = torch.randn(4, 32, 3), torch.tensor([0, 1, 2, 0])
    assert torch.isfinite(model(points, labels))
    model.eval()
    early, late = model.predict_log_probs(points, torch.zeros(4)), model.predict_log_probs(points, torch.ones(4))
    assert not torch.allclose(early, late)
    torch.testing.assert_close(model.predict_log_probs(points), early)
    clean = _classifier("pointnet")
    with pytest.raises(ValueError, match="not noise-aware"):
        clean.predict_log_probs(points, torch.full((4,), 0.5))


def test_labels_follow_the_classifier_classes() -> None:
    model = _classifier("pointnet")
    assert model.labels_from_dataset(torch.tensor([0, 1, 3])).tolist() == [0, 1, 2]  # airplane, chair, table
    with pytest.raises(ValueError, match="class 'car' is not one of"):
        model.labels_from_dataset(torch.tensor([2]))
    with pytest.raises(ValueError, match="unknown shape class 'sofa'"):
        ShapeClassifierConfig(classes=("chair", "sofa"))
    with pytest.raises(ValueError, match="unknown classifier architecture"):
        ShapeClassifierConfig(arch="resnet")


@pytest.mark.parametrize("arch", CLASSIFIER_ARCHITECTURES)
def test_export_round_trip(arch: str, tmp_path) -> None:
    model = _classifier(arch).eval()
    model.temperature = 1.7
    save_tree(model.export(), tmp_path / "model.safetensors")
    loaded = ShapeClassifier.load(str(tmp_path / "model.safetensors")).eval()
    assert loaded.config == model.config and loaded.temperature == 1.7 and loaded.normalisation == model.normalisation
    points = torch.randn(2, 100, 3)
    torch.testing.assert_close(loaded.predict_log_probs(points), model.predict_log_probs(points), atol=0, rtol=0)
    with pytest.raises(ValueError, match="not a shapectrl.classifier export"):
        ShapeClassifier.from_export({"kind": "shapectrl.prior"})


def test_pointnet_learns_to_tell_two_classes_apart() -> None:
    shapes = ProceduralShapes("train", per_class=8, n_points=128, classes=("airplane", "table"))
    model = _classifier("pointnet", dropout=0.0)
    labels = model.labels_from_dataset(shapes.labels)
    batches = ShapeBatches(shapes.normalised_points, 8, 64, labels, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(25):
        loss = model(*batches(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    valid = ProceduralShapes("valid", per_class=8, n_points=256, classes=("airplane", "table"),
                             normalisation=shapes.normalisation)
    scores = model.calibrate(valid.normalised_points, model.labels_from_dataset(valid.labels))
    assert scores["accuracy"] >= 0.9, scores


def test_train_classifier_cli_trains_and_resumes(tmp_path) -> None:
    run, data = tmp_path / "run", tmp_path / "data"
    args = ["train", "classifier", "--arch", "dgcnn", "--run-dir", str(run), "--data-dir", str(data), "--per-class", "2",
            "--data-points", "64", "--points", "32", "--valid-per-class", "2", "--classes", "chair,table",
            "--batch-size", "4", "--threads", "1", "--checkpoint-every", "2", "--log-every", "1"]
    runner = CliRunner()
    result = runner.invoke(main, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 2 and 0 <= evals[-1]["accuracy"] <= 1 and evals[-1]["temperature"] > 0
    resumed = runner.invoke(main, ["train", "classifier", "--run-dir", str(run), "--steps", "3", "--resume",
                                   "--threads", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output
    last = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3
    model = ShapeClassifier.load(str(run / "model.safetensors"))
    assert model.config.arch == "dgcnn" and model.classes == ("chair", "table")
    assert model.temperature == pytest.approx(last["temperature"], rel=1e-4)  # the calibration is exported
    bad = runner.invoke(main, ["train", "classifier", "--run-dir", str(tmp_path / "bad"), "--data-dir", str(data),
                               "--data-points", "64", "--points", "100"])
    assert bad.exit_code != 0 and "raise --data-points" in bad.output
