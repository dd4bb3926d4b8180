"""Chamfer and EMD against hand-computed cases, MMD / COV / 1-NNA, PLY and .npz I/O, and
``shapectrl evaluate``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import shapectrl.io as sio
from shapectrl.cli import main
from shapectrl.io import (
    ShapeFileError,
    read_ply,
    read_point_sets,
    write_ply,
    write_point_sets,
)
from shapectrl.metrics import (
    chamfer_distance,
    compute_all_metrics,
    emd_approx,
    emd_approxmatch,
    emd_exact,
    mmd_cov,
    nearest_sq_distances,
    one_nn_accuracy,
    one_nn_sides,
    pairwise_distances,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Chamfer


def test_chamfer_of_identical_clouds_is_zero_and_of_a_lifted_plane_is_known() -> None:
    x = _rand(3, 200, 3)
    torch.testing.assert_close(chamfer_distance(x, x), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(chamfer_distance(x, x[:, torch.randperm(200)]), torch.zeros(3), atol=1e-6, rtol=0)
    # Points in the plane z = 0 against the same points lifted by D: every nearest neighbour is the
    # point's own copy (any other is farther than D), so CD = D² + D².
    flat = x.clone()
    flat[..., 2] = 0
    lifted = flat + torch.tensor([0.0, 0.0, 0.3])
    torch.testing.assert_close(chamfer_distance(flat, lifted), torch.full((3,), 2 * 0.09), atol=1e-6, rtol=0)


def test_chamfer_hand_computed_on_a_line_translated_past_itself() -> None:
    x = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]])
    y = x + torch.tensor([5.0, 0, 0])  # y at 5, 6, 7: every x's nearest is 5, every y's nearest is 2
    assert float(chamfer_distance(x, y)) == pytest.approx((25 + 16 + 9) / 3 + (9 + 16 + 25) / 3)
    dx, dy = nearest_sq_distances(x[None], y[None])
    assert dx.tolist() == [[25.0, 16.0, 9.0]] and dy.tolist() == [[9.0, 16.0, 25.0]]


def test_chamfer_matches_brute_force_with_unequal_sizes_and_small_blocks() -> None:
    x, y = _rand(4, 70, 3, seed=1), _rand(4, 50, 3, seed=2)
    d = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    expected = d.min(dim=2).values.mean(1) + d.min(dim=1).values.mean(1)
    torch.testing.assert_close(chamfer_distance(x, y), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chamfer_distance(x, y, max_block=70 * 50), expected, atol=1e-6, rtol=1e-5)
    assert chamfer_distance(x[0], y[0]).shape == ()
    with pytest.raises(ValueError, match=r"expected \(N, 3\) or \(B, N, 3\)"):
        chamfer_distance(x[..., :2], y[..., :2])


# ----------------------------------------------------------------------------------------------
# EMD


@pytest.mark.parametrize("emd", [emd_exact, emd_approx, emd_approxmatch])
def test_emd_of_a_permuted_cloud_is_zero(emd) -> None:
    x = _rand(2, 40, 3, seed=3)
    torch.testing.assert_close(emd(x, x[:, torch.randperm(40)]), torch.zeros(2), atol=1e-6, rtol=0)
    point = torch.zeros(5, 3)  # every point in one place: all distances 0
    assert float(emd(point, point)) == pytest.approx(0.0, abs=1e-9)


def test_emd_two_points_each_side_beats_greedy_matching() -> None:
    # x at 0 and 2.1, y at 1.9 and 4: greedy nearest pairs 2.1-1.9 and 0-4 (mean 2.1); the optimal
    # matching is 0-1.9 and 2.1-4 (mean 1.9).
    x = torch.tensor([[0.0, 0, 0], [2.1, 0, 0]], dtype=torch.float64)
    y = torch.tensor([[1.9, 0, 0], [4.0, 0, 0]], dtype=torch.float64)
    assert float(emd_exact(x, y)) == pytest.approx(1.9)
    assert float(emd_approx(x, y)) == pytest.approx(1.9)
    assert float(emd_approxmatch(x, y)) >= 1.9 - 1e-9  # a feasible plan: never below the optimum
    # Two points each side of a unit square: straight across, mean distance 1.
    a = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
    assert float(emd_exact(a, a + torch.tensor([0.0, 1, 0]))) == pytest.approx(1.0)


def test_auction_emd_is_within_a_few_percent_of_exact_and_approxmatch_is_above() -> None:
    x, y = _rand(3, 256, 3, seed=4), _rand(3, 256, 3, seed=5)
    exact = emd_exact(x, y)
    auction = emd_approx(x, y)
    assert torch.all(auction >= exact - 1e-5) and torch.all(auction <= exact * 1.02)
    approxmatch = emd_approxmatch(x, y)
    assert torch.all(approxmatch >= exact - 1e-5)
    with pytest.raises(ValueError, match="equal size"):
        emd_approx(x[:, :10], y[:, :12])


# ----------------------------------------------------------------------------------------------
# MMD, COV, 1-NNA


def test_pairwise_distances_match_pairs_and_the_symmetric_case() -> None:
    a, b = _rand(4, 30, 3, seed=6), _rand(3, 30, 3, seed=7)
    d = pairwise_distances(a, b, "cd")
    expected = torch.stack([torch.stack([chamfer_distance(p, q) for q in b]) for p in a])
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(pairwise_distances(a, b, "cd", max_block=1), expected)
    calls = []
    s = pairwise_distances(a, None, "cd", max_block=1, progress=lambda done, total: calls.append((done, total)))
    torch.testing.assert_close(s, s.T)
    assert torch.all(s.diagonal() == 0) and calls[-1] == (6, 6)
    torch.testing.assert_close(s[0, 1], chamfer_distance(a[0], a[1]))
    with pytest.raises(ValueError, match="unknown cloud distance"):
        pairwise_distances(a, b, "l2")


def test_mmd_and_cov_on_a_hand_built_matrix() -> None:
    d_sr = torch.tensor([[1.0, 5.0, 3.0], [2.0, 0.5, 4.0]])  # 2 samples x 3 references
    out = mmd_cov(d_sr)
    assert out["mmd"] == pytest.approx((1 + 0.5 + 3) / 3)  # per reference: its nearest sample
    assert out["mmd_smp"] == pytest.approx((1 + 0.5) / 2)  # per sample: its nearest reference
    assert out["cov"] == pytest.approx(2 / 3)  # samples pick references 0 and 1


def test_one_nn_accuracy_on_hand_built_matrices_with_ties() -> None:
    d_ss = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    d_rr = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    d_sr = torch.tensor([[0.5, 3.0], [3.0, 3.0]])
    # s0 -> r0 (wrong), s1 -> s0 (right), r0 -> s0 (wrong), r1 -> r0 (right).
    assert one_nn_accuracy(d_ss, d_sr, d_rr) == pytest.approx(0.5)
    # All clouds identical: every cloud ties with 2 of its own set and 3 of the other.
    zeros3 = torch.zeros(3, 3)
    assert one_nn_accuracy(zeros3, zeros3, zeros3) == pytest.approx(2 / 5)


def test_one_nn_sides_separate_a_tight_sample_set_from_spread_references() -> None:
    # On a line: samples at 0 and 0.1, references at 5 and 10. Both samples find each other; reference 5 is
    # nearer sample 0.1 (4.9) than reference 10 (5); reference 10 finds reference 5.
    s, r = torch.tensor([0.0, 0.1]), torch.tensor([5.0, 10.0])
    d_ss, d_sr, d_rr = ((a[:, None] - b[None, :]).abs() for a, b in ((s, s), (s, r), (r, r)))
    assert one_nn_sides(d_ss, d_sr, d_rr) == pytest.approx((1.0, 0.5))
    assert one_nn_accuracy(d_ss, d_sr, d_rr) == pytest.approx(0.75)


def test_all_metrics_on_identical_and_separated_sets() -> None:
    s = _rand(4, 32, 3, seed=8)
    same = compute_all_metrics(s, s.clone(), metrics=("cd", "emd"))
    assert same["mmd-cd"] < 1e-6 and same["mmd-emd"] < 1e-3
    assert same["cov-cd"] == 1.0 and same["cov-emd"] == 1.0
    assert same["1nna-cd"] == 0.0 and same["1nna-emd"] == 0.0  # each cloud's nearest is its copy
    far = compute_all_metrics(s, _rand(5, 32, 3, seed=9) + 10.0, metrics=("cd", "emd-auction"))
    assert far["1nna-cd"] == 1.0 and far["1nna-emd-auction"] == 1.0
    assert far["1nna_smp-cd"] == 1.0 and far["1nna_ref-cd"] == 1.0 and same["1nna_ref-emd"] == 0.0
    assert far["mmd-cd"] > 250 and set(far) == {f"{k}-{m}" for k in ("mmd", "mmd_smp", "cov", "1nna", "1nna_smp", "1nna_ref")
                                                for m in ("cd", "emd-auction")}


# ----------------------------------------------------------------------------------------------
# I/O


def test_ply_round_trip_and_point_sets(tmp_path: Path) -> None:
    clouds = _rand(3, 25, 3, seed=10).numpy()
    for k, cloud in enumerate(clouds):
        write_ply(tmp_path / "ply" / f"{k:02d}.ply", cloud)
    np.testing.assert_array_equal(read_ply(tmp_path / "ply" / "01.ply"), clouds[1])
    np.testing.assert_array_equal(read_point_sets(tmp_path / "ply"), clouds)
    write_point_sets(tmp_path / "set.npz", clouds, labels=np.arange(3))
    np.testing.assert_array_equal(read_point_sets(tmp_path / "set.npz"), clouds)
    assert sorted(os.listdir(tmp_path)) == ["ply", "set.npz"]  # no temporary files left


def test_read_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    cases = {}
    (tmp_path / "text.ply").write_text("hello\n")
    cases["text.ply"] = r"text.ply:1: expected 'ply'"
    (tmp_path / "flat.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                                       "end_header\n1 2\n")
    cases["flat.ply"] = "flat.ply: vertices lack property 'z'"
    write_ply(tmp_path / "cut.ply", np.ones((10, 3)))
    (tmp_path / "cut.ply").write_bytes((tmp_path / "cut.ply").read_bytes()[:-5])
    cases["cut.ply"] = "cut.ply: .*early end-of-file"
    np.savez(tmp_path / "nokey.npz", clouds=np.zeros((2, 4, 3)))
    cases["nokey.npz"] = "nokey.npz: no array 'points' \\(found clouds"
    np.savez(tmp_path / "shape.npz", points=np.zeros((2, 4, 2)))
    cases["shape.npz"] = r"shape.npz: 'points' has shape \(2, 4, 2\)"
    cases["absent.npz"] = "absent.npz: no such file or folder"
    holed = np.zeros((4, 3))
    holed[2, 1] = np.nan
    write_ply(tmp_path / "nan.ply", holed)
    cases["nan.ply"] = "nan.ply: vertex 2 is not finite"
    np.savez(tmp_path / "inf.npz", points=np.where(np.eye(3, dtype=bool), np.inf, 0.0)[None])
    cases["inf.npz"] = "inf.npz: 'points' holds values that are not finite"
    for name, pattern in cases.items():
        with pytest.raises(ShapeFileError, match=pattern) as info:
            read_point_sets(tmp_path / name)
        assert "\n" not in str(info.value)
    mixed = tmp_path / "mixed"
    write_ply(mixed / "a.ply", np.zeros((4, 3)))
    write_ply(mixed / "b.ply", np.zeros((5, 3)))
    with pytest.raises(ShapeFileError, match=r"b.ply: 5 points \(expected 4, as in a.ply\)"):
        read_point_sets(mixed)


def test_write_ply_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cloud.ply"
    write_ply(target, np.zeros((4, 3)))
    before = target.read_bytes()

    def broken_write(self, stream) -> None:
        stream.write(b"ply\n")
        raise OSError("disk full")

    monkeypatch.setattr(sio.PlyData, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_ply(target, np.ones((4, 3)))
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["cloud.ply"]


# ----------------------------------------------------------------------------------------------
# CLI


def test_evaluate_cli_prints_metrics_and_json(tmp_path: Path) -> None:
    s, r = _rand(4, 32, 3, seed=11), _rand(4, 32, 3, seed=12)
    write_point_sets(tmp_path / "s.npz", s)
    for k, cloud in enumerate(r):
        write_ply(tmp_path / "ref" / f"{k}.ply", cloud)
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(tmp_path / "s.npz"), str(tmp_path / "ref"), "--metrics", "cd"])
    assert result.exit_code == 0, result.output
    assert "4 clouds" in result.output and "MMD" in result.output and "1-NNA" in result.output
    result = runner.invoke(main, ["evaluate", str(tmp_path / "s.npz"), str(tmp_path / "ref"),
                                  "--metrics", "cd,emd", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    expected = compute_all_metrics(s, r, ("cd", "emd"))
    assert out["metrics"].keys() == expected.keys() and out["n_points"] == 32
    assert out["metrics"]["mmd-cd"] == pytest.approx(expected["mmd-cd"])
    missing = runner.invoke(main, ["evaluate", str(tmp_path / "absent.npz"), str(tmp_path / "ref")])
    assert missing.exit_code == 2 and "absent.npz: no such file or folder" in missing.output


def test_cached_reference_distances_give_the_same_metrics() -> None:
    r = _rand(5, 24, 3, seed=3)
    cache: dict[str, torch.Tensor] = {}
    for seed in (4, 5):
        s = _rand(4, 24, 3, seed=seed)
        assert compute_all_metrics(s, r, ("cd",), reference_distances=cache) == compute_all_metrics(s, r, ("cd",))
    assert set(cache) == {"cd"} and cache["cd"].shape == (5, 5)
    with pytest.raises(ValueError, match="do not fit 4 references"):
        compute_all_metrics(s, r[:4], ("cd",), reference_distances=cache)
