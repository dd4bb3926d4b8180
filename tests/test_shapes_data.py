"""Procedural shapes, their splits, normalisation and cache, attributes measured from points, the
PC15k loader and ``shapectrl data build``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import spearmanr

from shapectrl.cli import main
from shapectrl.data import attributes as attrs
from shapectrl.data.families import CLASSES, builder
from shapectrl.data.mesh import box, cylinder, merge, sample_surface, triangle_areas
from shapectrl.data.normalisation import Normalisation
from shapectrl.data.pc15k import SYNSETS, ShapeNetPC15k
from shapectrl.data.procedural import (
    SPLIT_SEED_RANGES,
    ProceduralShapes,
    cache_name,
    make_shape,
    shape_mesh,
    shape_params,
    split_seeds,
)
from shapectrl.io import ShapeFileError

FIXTURE = Path(__file__).parent / "fixtures" / "pc15k"


def _clouds(class_name: str, seeds: range, n_points: int = 2048) -> tuple[torch.Tensor, list[dict]]:
    shapes = [make_shape(class_name, s, n_points) for s in seeds]
    return torch.stack([torch.from_numpy(s.points) for s in shapes]), [s.params for s in shapes]


# ----------------------------------------------------------------------------------------------
# Meshes and sampling


def test_unit_cube_points_fall_on_each_face_in_proportion_to_area() -> None:
    points = sample_surface(box((1.0, 1.0, 1.0)), 60_000, np.random.default_rng(0))
    on_face = np.abs(np.abs(points) - 0.5) < 1e-9  # (N, 3): on the face normal to that axis
    assert on_face.any(axis=1).all()  # every point is on the surface
    fractions = [np.mean(on_face[:, k] & (np.sign(points[:, k]) == s)) for k in range(3) for s in (-1, 1)]
    np.testing.assert_allclose(fractions, 1 / 6, atol=0.006)  # 4 binomial standard deviations


def test_sampling_follows_area_across_primitives() -> None:
    small, large = box((0.1, 0.1, 0.1), (5, 0, 0)), box((1.0, 2.0, 1.0))
    mesh = merge([small, large])
    points = sample_surface(mesh, 40_000, np.random.default_rng(1))
    share = triangle_areas(small).sum() / triangle_areas(mesh).sum()
    assert np.mean(points[:, 0] > 2) == pytest.approx(share, abs=0.004)
    caps = cylinder(1.0, 2.0, 64)
    pts = sample_surface(caps, 40_000, np.random.default_rng(2))
    cap_area = 2 * 0.5 * 64 * np.sin(2 * np.pi / 64)  # two 64-gons of circumradius 1
    side_area = triangle_areas(caps).sum() - cap_area
    assert np.mean(np.abs(pts[:, 1]) > 1 - 1e-9) == pytest.approx(cap_area / (cap_area + side_area), abs=0.01)


# ----------------------------------------------------------------------------------------------
# Shapes, seeds and splits


@pytest.mark.parametrize("class_name", CLASSES)
def test_make_shape_is_deterministic_labelled_and_any_size(class_name: str) -> None:
    a, b = make_shape(class_name, 7), make_shape(class_name, 7)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.params == b.params and a.label == CLASSES.index(class_name) and a.class_name == class_name
    assert a.points.shape == (2048, 3) and a.points.dtype == np.float32
    assert make_shape(class_name, 8).params != a.params
    for n in (1, 100, 3000):
        other = make_shape(class_name, 7, n)
        assert other.points.shape == (n, 3) and other.params == a.params  # same shape, any N
    assert shape_params(class_name, 7) == a.params
    json.dumps(a.params)  # plain values only
    # Canonical frame: bounding box centred on the origin, mirror-symmetric across x = 0.
    v = shape_mesh(class_name, a.params).vertices
    np.testing.assert_allclose((v.min(axis=0) + v.max(axis=0)) / 2, 0, atol=1e-12)
    np.testing.assert_allclose(v[:, 0].min(), -v[:, 0].max(), atol=1e-12)


def test_unknown_class_and_negative_seed_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape class 'sofa'.*airplane, chair"):
        make_shape("sofa", 0)
    with pytest.raises(ValueError, match="negative"):
        make_shape("chair", -1)


def test_front_faces_plus_z() -> None:
    # The airplane's nose tip is the furthest point along +z, on the fuselage axis.
    p = shape_params("airplane", 3)
    v = builder("airplane")(p).vertices
    nose = v[np.argmax(v[:, 2])]
    assert nose[2] == pytest.approx(p["fuselage_length"] / 2) and np.abs(nose[:2]).max() < 1e-9
    # A chair's backrest, its highest part, stands at the rear (-z).
    chair = make_shape("chair", 3).points
    top = chair[chair[:, 1] > np.quantile(chair[:, 1], 0.95)]
    assert top[:, 2].mean() < 0


def test_split_seeds_are_disjoint_prefix_stable_and_in_range() -> None:
    seeds = {s: split_seeds(s, 500) for s in SPLIT_SEED_RANGES}
    for split, values in seeds.items():
        assert len(set(values.tolist())) == 500
        assert all(v in SPLIT_SEED_RANGES[split] for v in values.tolist())
    assert not set(seeds["train"]) & set(seeds["valid"]) and not set(seeds["valid"]) & set(seeds["test"])
    np.testing.assert_array_equal(split_seeds("train", 20), seeds["train"][:20])  # growing keeps shapes
    assert not np.array_equal(split_seeds("train", 20, seed=1), seeds["train"][:20])
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("val", 3)


# ----------------------------------------------------------------------------------------------
# Data sets, normalisation, cache


def test_procedural_shapes_tensors_and_global_normalisation(tmp_path: Path) -> None:
    train = ProceduralShapes("train", per_class=3, n_points=64, classes=("chair", "lamp"), cache_dir=tmp_path)
    assert train.points.shape == (6, 64, 3) and train.points.dtype == torch.float32
    assert train.labels.tolist() == [1, 1, 1, 4, 4, 4] and len(train.params) == 6 and len(train) == 6
    np.testing.assert_array_equal(train.seeds, np.tile(split_seeds("train", 3), 2))
    norm = train.normalisation
    flat = train.points.double().reshape(-1, 3)
    np.testing.assert_allclose(norm.mean, flat.mean(dim=0).numpy(), atol=1e-9)
    assert norm.std == pytest.approx(float(flat.reshape(-1).std(unbiased=False)), rel=1e-9)
    z = train.normalised_points.double()
    np.testing.assert_allclose(z.reshape(-1, 3).mean(dim=0).numpy(), 0, atol=1e-5)
    torch.testing.assert_close(z, (train.points.double() - torch.tensor(norm.mean)) / norm.std)
    torch.testing.assert_close(norm.denormalise(train.normalised_points), train.points, atol=1e-6, rtol=0)

    valid = ProceduralShapes("valid", per_class=2, n_points=64, classes=("chair", "lamp"), cache_dir=tmp_path)
    assert valid.normalisation == ProceduralShapes("train", 2, 64, ("chair", "lamp"), cache_dir=tmp_path).normalisation
    sized = ProceduralShapes("valid", per_class=2, n_points=64, classes=("chair", "lamp"), train_per_class=3)
    assert sized.normalisation == norm
    given = ProceduralShapes("test", per_class=2, n_points=64, classes=("chair", "lamp"), normalisation=norm)
    assert given.normalisation == norm
    assert not set(valid.seeds.tolist()) & set(train.seeds.tolist())


def test_cache_is_reused_and_a_broken_cache_is_reported(tmp_path: Path) -> None:
    first = ProceduralShapes("train", per_class=2, n_points=32, classes=("car",), cache_dir=tmp_path)
    path = tmp_path / cache_name("train", ("car",), 2, 32, 0)
    assert first.cache_path == path and path.exists() and first.build_seconds > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    again = ProceduralShapes("train", per_class=2, n_points=32, classes=("car",), cache_dir=tmp_path)
    assert again.build_seconds == 0
    torch.testing.assert_close(again.points, first.points)
    assert again.params == first.params and again.normalisation == first.normalisation
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"not a readable shape cache.*delete it to rebuild") as info:
        ProceduralShapes("train", per_class=2, n_points=32, classes=("car",), cache_dir=tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_normalisation_round_trips_numpy_and_dict() -> None:
    points = np.random.default_rng(0).normal(size=(4, 10, 3)).astype(np.float32)
    norm = Normalisation.fit(points)
    np.testing.assert_allclose(norm.denormalise(norm.normalise(points)), points, atol=1e-6)
    assert Normalisation.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm


# ----------------------------------------------------------------------------------------------
# Attributes


def test_extents_aspect_ratios_on_a_known_box() -> None:
    points = torch.from_numpy(sample_surface(box((0.4, 1.0, 2.0)), 4000, np.random.default_rng(0)))
    torch.testing.assert_close(attrs.extents(points), torch.tensor([0.4, 1.0, 2.0], dtype=torch.float64), atol=1e-3, rtol=0)
    assert float(attrs.width_to_height(points)) == pytest.approx(0.4, abs=1e-3)
    assert float(attrs.depth_to_height(points)) == pytest.approx(2.0, abs=1e-3)
    assert float(attrs.width_to_depth(points)) == pytest.approx(0.2, abs=1e-3)
    assert float(attrs.height(points)) == pytest.approx(1.0, abs=1e-3)


def test_attributes_batch_like_single_clouds_and_measure_everything() -> None:
    clouds, _ = _clouds("table", range(3), 512)
    values = attrs.measure(clouds)
    assert set(values) == set(attrs.ATTRIBUTES) and set(attrs.ATTRIBUTE_CLASS) <= set(attrs.ATTRIBUTES)
    for name, batch in values.items():
        assert batch.shape == (3,)
        single = torch.stack([attrs.ATTRIBUTES[name](c) for c in clouds])
        torch.testing.assert_close(batch, single, msg=name)
    with pytest.raises(ValueError, match="unknown attribute"):
        attrs.measure(clouds, ["size"])
    with pytest.raises(ValueError, match=r"expected \(N, 3\) or \(B, N, 3\)"):
        attrs.height(torch.zeros(5, 2))


def test_asymmetry_separates_symmetric_from_lopsided_clouds() -> None:
    clouds, _ = _clouds("chair", range(4))
    symmetric = attrs.asymmetry(clouds)
    lopsided = clouds.clone()
    left = lopsided[:, :, 0] < 0
    lopsided[:, :, 1] = torch.where(left, lopsided[:, :, 1] + 0.2, lopsided[:, :, 1])  # raise the left half
    assert symmetric.max() < 0.02 and attrs.asymmetry(lopsided).min() > 3 * symmetric.max()


def test_chair_back_height_tracks_its_parameter() -> None:
    clouds, params = _clouds("chair", range(30))
    measured = attrs.chair_back_height(clouds).numpy()
    expected = []
    for p in params:
        v = builder("chair")(p).vertices
        top = v[:, 1].max()  # floor at 0 before centring; the seat's mid-plane is seat_height - t/2
        expected.append((top - (p["seat_height"] - p["seat_thickness"] / 2)) / top)
    assert spearmanr(expected, measured)[0] > 0.95
    assert np.abs(np.array(expected) - measured).max() < 0.05
    # With everything else fixed, a taller backrest always measures taller.
    base = dict(params[0])
    sweep = []
    for back in np.linspace(0.2, 0.7, 6):
        p = {**base, "back_height": float(back)}
        cloud = sample_surface(shape_mesh("chair", p), 2048, np.random.default_rng(0))
        sweep.append(float(attrs.chair_back_height(torch.from_numpy(cloud))))
    assert np.all(np.diff(sweep) > 0)


@pytest.mark.parametrize(("class_name", "attribute", "truth"), [
    ("table", "table_top_height", lambda p, v: p["height"] - p["top_thickness"] / 2),
    ("airplane", "airplane_wing_span", lambda p, v: p["wing_span"] / p["fuselage_length"]),
    ("lamp", "lamp_shade_radius", lambda p, v: p["shade_radius"] / np.ptp(v[:, 1])),
    ("car", "car_roof_length", lambda p, v: p["roof_length"] / p["body_length"]),
])
def test_class_attribute_tracks_its_parameter(class_name: str, attribute: str, truth) -> None:
    clouds, params = _clouds(class_name, range(30))
    measured = attrs.ATTRIBUTES[attribute](clouds).numpy()
    expected = [truth(p, builder(class_name)(p).vertices) for p in params]
    assert spearmanr(expected, measured)[0] > 0.9


def test_attributes_are_measured_after_denormalising() -> None:
    clouds, _ = _clouds("lamp", range(4), 256)
    norm = Normalisation.fit(clouds)
    round_trip = attrs.lamp_shade_radius(norm.denormalise(norm.normalise(clouds)))
    torch.testing.assert_close(round_trip, attrs.lamp_shade_radius(clouds), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# ShapeNetCore.v2.PC15k


def test_pc15k_loads_the_fixture_deterministically() -> None:
    train = ShapeNetPC15k(FIXTURE, "train", classes=("airplane", "chair"), n_points=20, seed=3)
    assert train.points.shape == (6, 20, 3) and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.model_ids[0] == f"{SYNSETS['airplane']}/model001"
    again = ShapeNetPC15k(FIXTURE, "train", classes=("airplane", "chair"), n_points=20, seed=3)
    torch.testing.assert_close(again.points, train.points)
    full = np.load(FIXTURE / SYNSETS["airplane"] / "train" / "model001.npy")
    rows = {tuple(r) for r in full.tolist()}
    assert all(tuple(r) in rows for r in train.points[0].tolist())  # a subsample of the file
    assert len({tuple(r) for r in train.points[0].tolist()}) == 20  # without replacement
    valid = ShapeNetPC15k(FIXTURE, "valid", classes=("airplane", "chair"), n_points=20, seed=3)
    assert len(valid) == 2 and valid.normalisation == train.normalisation


def test_pc15k_reports_missing_folders_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ShapeFileError, match="no such folder .*<synset id>") as info:
        ShapeNetPC15k(tmp_path / "absent")
    assert "\n" not in str(info.value)
    with pytest.raises(ShapeFileError, match=r"03001627/test: no such folder"):
        root = tmp_path / "partial"
        shutil.copytree(FIXTURE / SYNSETS["chair"] / "train", root / SYNSETS["chair"] / "train")
        ShapeNetPC15k(root, "test", classes=("chair",), n_points=10)
    with pytest.raises(ShapeFileError, match=r"model001.npy: array of shape \(50, 3\) \(expected \(K, 3\) with K >= 64"):
        ShapeNetPC15k(FIXTURE, "train", classes=("airplane",), n_points=64)
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURE, broken)
    np.save(broken / SYNSETS["chair"] / "val" / "model010.npy", np.zeros((50, 2), dtype=np.float32))
    with pytest.raises(ShapeFileError, match=r"model010.npy: array of shape \(50, 2\)"):
        ShapeNetPC15k(broken, "valid", classes=("chair",), n_points=10, normalisation=Normalisation.identity())


# ----------------------------------------------------------------------------------------------
# CLI


def test_data_build_writes_splits_and_normalisation(tmp_path: Path) -> None:
    args = ["data", "build", "--out", str(tmp_path), "--per-class", "3", "--points", "32", "--classes", "chair,table"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "train: 6 shapes (2 classes x 3) x 32 points" in result.output and "valid: 2 shapes" in result.output
    stored = json.loads((tmp_path / "normalisation.json").read_text())
    train = ProceduralShapes("train", 3, 32, ("chair", "table"), cache_dir=tmp_path)
    assert train.build_seconds == 0 and Normalisation.from_dict(stored) == train.normalisation
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "cached" in again.output
    bad = CliRunner().invoke(main, ["data", "build", "--out", str(tmp_path), "--classes", "sofa"])
    assert bad.exit_code == 2 and "unknown class 'sofa'" in bad.output
