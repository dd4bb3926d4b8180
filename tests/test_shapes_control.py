"""Shape control: condition encoding, the class + attribute reward, pay-off resampling of a pool, the
control objectives, and ``shapectrl train control``."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from common.conditioning import CLIP
from common.control import ConditionedDenoising, PayoffBatches
from common.weights import save_tree
from shapectrl.classifier import ShapeClassifier, ShapeClassifierConfig
from shapectrl.cli import main
from shapectrl.conditions import ShapeConditions
from shapectrl.control import (
    ControlledShapes,
    ShapeControlConfig,
    ShapePool,
    ShapeTargets,
    target_class,
)
from shapectrl.data.families import CLASSES
from shapectrl.data.normalisation import Normalisation
from shapectrl.prior import ShapeDiffusion, ShapePriorConfig
from shapectrl.reward import ShapeReward

torch.set_num_threads(1)

ATTRS = ("height", "chair_back_height")


def _conditions() -> ShapeConditions:
    return ShapeConditions(CLASSES, ATTRS, torch.tensor([0.6, 0.4]), torch.tensor([0.3, 0.2]))


def _classifier() -> ShapeClassifier:
    torch.manual_seed(0)
    return ShapeClassifier(ShapeClassifierConfig(widths=(8, 16), head_hidden=16), Normalisation((0.0, 0.0, 0.0), 0.5))


class _FixedScores(ShapeReward):
    """A reward whose scores are given per cloud (the cloud's first coordinate indexes them)."""

    def __init__(self, table: torch.Tensor):
        super().__init__(_classifier(), _conditions())
        self.table = table

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0].long()]


# ----------------------------------------------------------------------------------------------
# Conditions


def test_encoding_is_one_hot_class_standardised_attributes_and_masks() -> None:
    cond = _conditions()
    y = torch.tensor([[1.0, 0.9, 0.2], [3.0, 100.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    c = cond.encode(y, mask)
    assert c.shape == (2, cond.cond_dim) == (2, len(CLASSES) + 4)
    k = len(CLASSES)
    assert c[0, :k].tolist() == [0, 1, 0, 0, 0] and c[1, :k].abs().sum() == 0  # masked class: all zero
    assert c[0, k] == pytest.approx((0.9 - 0.6) / 0.3) and c[0, k + 1] == 0  # masked attribute reads 0
    assert c[1, k] == CLIP and c[1, k + 1] == pytest.approx((0.0 - 0.4) / 0.2)  # outliers clipped
    assert c[:, k + 2 :].tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        cond.encode(y[:, :2], mask[:, :2])


def test_class_specific_attributes_apply_to_their_class_only() -> None:
    cond = _conditions()
    applies = cond.applies()
    chair = CLASSES.index("chair")
    assert applies[:, 0].all() and applies[chair, 1] and applies[:, 1].sum() == 1
    labels = torch.arange(len(CLASSES)).repeat(200)
    mask = cond.random_mask(labels, 0.5, 0.9, torch.Generator().manual_seed(0))
    assert mask.any(1).all()  # never empty
    assert not mask[labels != chair, 2].any() and mask[labels == chair, 2].float().mean() > 0.8
    assert 0.4 < mask[:, 0].float().mean() < 0.7


def test_statistics_of_a_class_attribute_come_from_its_class() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1])  # indices into ("airplane", "chair")
    values = torch.tensor([[1.0, 9.0], [3.0, 9.0], [5.0, 0.2], [7.0, 0.4], [9.0, 0.6]])
    cond = ShapeConditions.fit(values, labels, ("airplane", "chair"), ATTRS)
    assert cond.mean.tolist() == pytest.approx([5.0, 0.4])  # the airplanes' 9.0 are left out of the back height
    assert cond.scale[1] == pytest.approx(0.2)


def test_targets_by_name_and_their_errors() -> None:
    cond = _conditions()
    y, mask = cond.target("chair", {"chair_back_height": 0.7})
    assert y.tolist() == pytest.approx([CLASSES.index("chair"), 0.0, 0.7]) and mask.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="unknown class 'sofa'"):
        cond.target("sofa")
    with pytest.raises(ValueError, match="unknown attribute 'wings'"):
        cond.target(None, {"wings": 1.0})
    with pytest.raises(ValueError, match="needs a class or at least one attribute"):
        cond.target()
    with pytest.raises(ValueError, match=r"chair_back_height=1.5 is outside what the model can be asked \(-0.6 to 1.4"):
        cond.target("chair", {"chair_back_height": 1.5})  # beyond mean ± 5 sd the encoding is clipped: 1.4 and 9 alike
    assert cond.rare({"chair_back_height": 0.9}) == []  # 2.5 sd
    (line,) = cond.rare({"chair_back_height": 1.1})  # 3.5 sd: accepted, with a warning
    assert line.startswith("chair_back_height=1.1 is 3.5 standard deviations from the training mean 0.4")
    assert ShapeConditions.from_dict(cond.to_dict()).to_dict() == cond.to_dict()


# ----------------------------------------------------------------------------------------------
# Reward


def test_reward_is_class_log_probability_plus_attribute_gaussian() -> None:
    reward = ShapeReward(_classifier(), _conditions(), tolerance=0.5, tail=None)
    scores = torch.tensor([[-0.1, -2.0, -3.0, -4.0, -5.0, 0.8, 0.5]])
    y = torch.tensor([[1.0, 0.95, 0.0]])
    s = 0.5 * 0.3  # tolerance × the attribute's scale
    expected = -2.0 + (-0.5 * ((0.95 - 0.8) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi))
    got = reward.log_likelihood(scores, y, torch.tensor([[True, True, False]]))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    only_class = reward.log_likelihood(scores, y, torch.tensor([[True, False, False]]))
    assert only_class.item() == pytest.approx(-2.0)


def test_reward_broadcasts_targets_against_a_pool_and_runs_on_clouds() -> None:
    reward = ShapeReward(_classifier(), _conditions())
    clouds = torch.randn(6, 40, 3, generator=torch.Generator().manual_seed(0))
    scores = reward.scores(clouds)
    assert scores.shape == (6, len(CLASSES) + 2)
    assert torch.allclose(scores[:, :5].exp().sum(1), torch.ones(6), atol=1e-5)
    y = torch.tensor([[1.0, 0.7, 0.5], [4.0, 0.3, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    table = reward.log_likelihood(scores.unsqueeze(0), y.unsqueeze(1), mask.unsqueeze(1))
    rows = torch.stack([reward(clouds, torch.ones(6, 40, dtype=torch.bool), y[b].expand(6, 3), mask[b].expand(6, 3))
                        for b in range(2)])
    assert table.shape == (2, 6) and torch.allclose(table, rows, atol=1e-4)
    with pytest.raises(ValueError, match="does not know class 'airplane'"):
        ShapeReward(ShapeClassifier(ShapeClassifierConfig(classes=("chair", "car"))), _conditions())


# ----------------------------------------------------------------------------------------------
# Pay-off resampling and objectives


def _pool(n: int = 50) -> ShapePool:
    """Pool clouds whose class is k % 5 with certainty and whose height is k / n."""
    k = torch.arange(n)
    log_probs = torch.full((n, 5), -30.0)
    log_probs[k, k % 5] = 0.0
    scores = torch.cat([log_probs, (k / n).unsqueeze(1), torch.full((n, 1), 0.4)], dim=1)
    points = k.float().view(n, 1, 1).expand(n, 8, 3).clone()
    return ShapePool(points, scores, 10, 0.0)


def test_payoff_resampling_picks_the_target_class_and_the_nearest_attribute() -> None:
    pool = _pool()
    reward = _FixedScores(pool.scores)
    config = ShapeControlConfig(p_class=1.0, p_attribute=0.0)
    labels = torch.arange(40) % 5
    values = torch.stack([torch.full((40,), 0.5), torch.full((40,), 0.4)], dim=1)
    targets = ShapeTargets(_conditions(), labels, values, config)
    batches = PayoffBatches(pool, reward, targets.batches(16, 8, seed=0))
    points, y, y_mask = batches(0)
    picked = points[:, 0, 0].long()
    _, ess = batches.pick(*batches.targets(0), torch.Generator().manual_seed(0))
    assert (picked % 5 == y[:, 0].long()).all() and y_mask[:, 0].all() and (ess > 9).all()  # 10 clouds per class
    # a height target: the pool's tolerance-weighted nearest heights win
    y_h, mask_h = torch.tensor([[0.0, 0.5, 0.0]]), torch.tensor([[False, True, False]])
    r = reward.log_likelihood(pool.scores.unsqueeze(0), y_h.unsqueeze(1), mask_h.unsqueeze(1))
    assert r.argmax().item() == 25
    assert torch.equal(batches(3)[0], batches(3)[0])  # a function of the step


def test_target_class_names_the_class_only_when_every_row_asks_for_it() -> None:
    conditions = _conditions()
    chair = conditions.target("chair")
    y, y_mask = chair[0].expand(3, -1).clone(), chair[1].expand(3, -1).clone()
    assert target_class(conditions, y, y_mask) == "chair"
    with_attribute = conditions.target("chair", {"chair_back_height": 0.5})
    assert target_class(conditions, with_attribute[0][None], with_attribute[1][None]) == "chair"
    attribute_alone = conditions.target(None, {"height": 0.5})
    assert target_class(conditions, attribute_alone[0][None], attribute_alone[1][None]) is None
    y[1, 0] = CLASSES.index("car")
    assert target_class(conditions, y, y_mask) is None  # two classes in one batch
    y_mask[1, 0] = False
    assert target_class(conditions, y, y_mask) is None  # a row without a class


def test_target_classes_give_targets_of_their_class_alone_and_the_pool_stays_every_cloud() -> None:
    pool = _pool()
    config = ShapeControlConfig(p_class=1.0, p_attribute=0.5, target_classes=(CLASSES[2],))
    labels = torch.arange(40) % 5
    targets = ShapeTargets(_conditions(), labels, torch.full((40, 2), 0.4), config)
    assert len(targets) == 8 and torch.equal(targets.rows, torch.arange(2, 40, 5))
    points, y, y_mask = PayoffBatches(pool, _FixedScores(pool.scores), targets.batches(16, 8, seed=0))(0)
    assert (y[:, 0] == 2).all() and y_mask[:, 0].all()  # the class is always conditioned
    assert (points[:, 0, 0].long() % 5 == 2).all()  # the reward picked the class's clouds from the whole pool
    with pytest.raises(ValueError, match="always condition on their class"):
        ShapeControlConfig(p_class=0.8, target_classes=("chair",))
    with pytest.raises(ValueError, match="target class 'boat' is not in the data"):
        ShapeTargets(_conditions(), labels, torch.full((40, 2), 0.4), ShapeControlConfig(p_class=1.0, target_classes=("boat",)))


def test_data_proposal_scores_training_clouds_at_the_training_size_and_subsamples_them() -> None:
    reference = _pool()
    clouds = reference.points[:, :1].expand(-1, 32, 3).clone()  # 32 points each, all at the cloud's index
    seen = []

    class Recording(_FixedScores):
        def scores(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[1])
            return super().scores(x)

    reward = Recording(reference.scores)
    pool = ShapePool.from_data(clouds, reward, n_points=8, batch_size=16)
    assert set(seen) == {8} and torch.equal(pool.scores, reference.scores) and pool.sampling_steps == 0
    labels = torch.arange(40) % 5
    targets = ShapeTargets(_conditions(), labels, torch.full((40, 2), 0.4), ShapeControlConfig(p_class=1.0, p_attribute=0.0))
    points, y, _ = PayoffBatches(pool, reward, targets.batches(16, 8, seed=0))(0)
    assert points.shape == (16, 8, 3) and (points[:, 0, 0].long() % 5 == y[:, 0].long()).all()


def test_conditioned_denoising_starts_at_the_prior_and_exports_its_conditions(tmp_path) -> None:
    torch.manual_seed(0)
    prior = ShapeDiffusion(ShapePriorConfig(width=16, depth=1, voxel_channels=4), Normalisation((0, 0, 0), 1.0), CLASSES)
    objective = ConditionedDenoising(prior.with_condition(_conditions().cond_dim), _conditions(),
                                     ShapeControlConfig(method="cond"))
    points = torch.randn(3, 16, 3)
    y, mask = torch.tensor([[1.0, 0.5, 0.3]]).expand(3, 3), torch.ones(3, 3, dtype=torch.bool)
    t = torch.tensor([10, 500, 900])
    z = torch.randn(3, 16, 3)
    full = torch.ones(3, 16, dtype=torch.bool)
    eps_model = objective.model.denoiser(z, t / 1000, full, _conditions().encode(y, mask))
    assert torch.allclose(eps_model, prior.denoiser(z, t / 1000, full))
    assert torch.isfinite(objective(points, y, mask))
    save_tree(objective.export(), tmp_path / "m.safetensors")
    loaded = ControlledShapes.load(tmp_path / "m.safetensors")
    assert loaded.conditions.attributes == ATTRS and loaded.control["method"] == "cond"
    clouds = loaded.sample(y[:2], mask[:2], n_points=12, n_sampling_steps=3, generator=torch.Generator().manual_seed(0))
    assert clouds.shape == (2, 12, 3) and torch.isfinite(clouds).all()
    with pytest.raises(ValueError, match="not a controlled shape model"):
        save_tree(prior.export(), tmp_path / "prior.safetensors")
        ControlledShapes.load(tmp_path / "prior.safetensors")
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        ShapeControlConfig(method="ppo")


# ----------------------------------------------------------------------------------------------
# CLI


TINY_DATA = ["--per-class", "2", "--data-points", "64", "--points", "32", "--classes", "chair,table"]
TINY_RUN = ["--batch-size", "4", "--threads", "1", "--checkpoint-every", "1", "--log-every", "1"]


@pytest.mark.parametrize("method, proposal, extra", [("rgdm", "prior", []), ("rgdm", "data", ["--neighbours", "2"]),
                                                    ("rgdm", "data", ["--target-classes", "chair"]),
                                                    ("ctrl", "prior", []),
                                                    ("ctrl", "prior", ["--score-early", "--samples-per-target", "2"]),
                                                    ("cond", "prior", [])])
def test_train_control_cli_trains_each_method_and_resumes(tmp_path, method: str, proposal: str, extra: list[str]) -> None:
    data = str(tmp_path / "data")
    runner = CliRunner()
    prior_args = ["train", "prior", "--run-dir", str(tmp_path / "prior"), "--data-dir", data, "--steps", "1",
                  "--width", "16", "--depth", "1", "--voxel-channels", "4", "--diffusion-steps", "20"]
    assert runner.invoke(main, [*prior_args, *TINY_DATA, *TINY_RUN]).exit_code == 0
    cls_args = ["train", "classifier", "--run-dir", str(tmp_path / "cls"), "--data-dir", data, "--steps", "1",
                "--valid-per-class", "2"]
    assert runner.invoke(main, [*cls_args, *TINY_DATA, *TINY_RUN]).exit_code == 0
    run = tmp_path / method
    args = ["train", "control", "--method", method, "--run-dir", str(run), "--data-dir", data,
            "--prior", str(tmp_path / "prior" / "model.safetensors"), "--reward", str(tmp_path / "cls" / "model.safetensors"),
            "--attributes", "height,chair_back_height", "--pool-size", "8", "--pool-steps", "3",
            "--sampling-steps", "3", "--proposal", proposal, *extra, *TINY_DATA, *TINY_RUN]
    result = runner.invoke(main, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert (" ess " in result.output) == (method == "rgdm") and (" kl " in result.output) == (method == "ctrl")
    assert (run / "pool.safetensors").exists() == (method == "rgdm" and proposal == "prior")
    resumed = runner.invoke(main, ["train", "control", "--run-dir", str(run), "--resume", "--steps", "3"])
    assert resumed.exit_code == 0 and "at step 2" in resumed.output, resumed.output
    model = ControlledShapes.load(run / "model.safetensors")
    assert model.conditions.classes == ("chair", "table") and model.control["method"] == method
    control = json.loads((run / "run.json").read_text())["control"]
    assert control["attributes"] == ["height", "chair_back_height"]
    assert control["score_early"] == ("--score-early" in extra)
    assert (control["target_classes"], control["p_class"]) == ((["chair"], 1.0) if "--target-classes" in extra else ([], 0.8))
    assert model.target_classes == tuple(control["target_classes"])
    grown = 2 if "--neighbours" in extra else 0  # the prior's network grew a local branch, and was trained with it
    assert control["neighbours"] == model.model.config.neighbours == grown
    assert all((block.from_local is not None) == bool(grown) for block in model.model.denoiser.blocks)


def test_train_control_cli_errors(tmp_path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["train", "control", "--run-dir", str(tmp_path / "r"), "--prior", str(tmp_path / "no.pt"),
                                   "--reward", str(tmp_path / "no.pt")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "x.pt").write_bytes(b"")
    bad = runner.invoke(main, ["train", "control", "--run-dir", str(tmp_path / "r"), "--prior", str(tmp_path / "x.pt"),
                               "--reward", str(tmp_path / "x.pt"), "--attributes", "height,wings"])
    assert bad.exit_code == 2 and "unknown attribute 'wings'" in bad.output
    for extra, message in ((["--target-classes", "boat"], "unknown class 'boat'"),
                           (["--target-classes", "chair", "--p-class", "0.5"], "always condition on their class")):
        wrong = runner.invoke(main, ["train", "control", "--run-dir", str(tmp_path / "r"), "--prior", str(tmp_path / "x.pt"),
                                     "--reward", str(tmp_path / "x.pt"), *extra])
        assert wrong.exit_code == 2 and message in wrong.output, wrong.output


def test_classifier_free_guidance_interpolates_the_conditional_and_the_empty_condition() -> None:
    from common.guidance import ConditionScaled

    torch.manual_seed(0)
    prior = ShapeDiffusion(ShapePriorConfig(width=16, depth=1, voxel_channels=4), Normalisation((0, 0, 0), 1.0), CLASSES)
    model = prior.with_condition(_conditions().cond_dim)
    torch.nn.init.normal_(model.denoiser.cond_embed.weight)
    z, t = torch.randn(2, 10, 3), torch.tensor([0.3, 0.9])
    mask, cond = torch.ones(2, 10, dtype=torch.bool), torch.randn(2, _conditions().cond_dim)
    conditional, empty = model.denoiser(z, t, mask, cond), model.denoiser(z, t, mask, torch.zeros_like(cond))
    assert torch.allclose(empty, prior.denoiser(z, t, mask), atol=1e-6)  # the empty condition is the backbone alone
    assert torch.allclose(ConditionScaled(model.denoiser, 1.0)(z, t, mask, cond), conditional, atol=1e-6)
    assert torch.allclose(ConditionScaled(model.denoiser, 3.0)(z, t, mask, cond), empty + 3 * (conditional - empty),
                          atol=1e-5)
    with pytest.raises(ValueError, match="needs a condition"):
        ConditionScaled(model.denoiser, 2.0)(z, t, mask)
    # a window guides only the rows with lo < t ≤ hi and leaves the others to the conditional model
    windowed = ConditionScaled(model.denoiser, 3.0, window=(0.5, 1.0))(z, t, mask, cond)
    assert torch.allclose(windowed[0], conditional[0], atol=1e-6)
    assert torch.allclose(windowed[1], (empty + 3 * (conditional - empty))[1], atol=1e-5)
    assert torch.allclose(ConditionScaled(model.denoiser, 3.0, window=(0.95, 1.0))(z, t, mask, cond), conditional,
                          atol=1e-6)


def test_class_check_redraws_class_targets_only_and_names_a_class_it_cannot_read() -> None:
    torch.manual_seed(0)
    prior = ShapeDiffusion(ShapePriorConfig(width=16, depth=1, voxel_channels=4, n_steps=10), Normalisation((0, 0, 0), 1.0),
                           CLASSES)
    controlled = ControlledShapes(prior.with_condition(_conditions().cond_dim), _conditions(), {})
    y = torch.tensor([[float(CLASSES.index("chair")), 0.0, 0.0], [0.0, 0.7, 0.0]])
    y_mask = torch.tensor([[True, False, False], [False, True, False]])  # a chair; a height alone
    always_table = _classifier()
    with torch.no_grad():
        always_table.head[-1].bias[CLASSES.index("table")] = 1e3
    clouds, draws, in_class = controlled.sample_in_class(y, y_mask, always_table, 3, n_points=16, n_sampling_steps=2,
                                                         generator=torch.Generator().manual_seed(0))
    assert clouds.shape == (2, 16, 3)
    assert draws.tolist() == [4, 1] and in_class.tolist() == [False, True]  # the chair is refused on every draw
    short = ShapeClassifier(ShapeClassifierConfig(classes=("airplane", "chair"), widths=(8,), head_hidden=8))
    with pytest.raises(ValueError, match="does not know class 'car'"):
        controlled.sample_in_class(y, y_mask, short, 1, n_points=16, n_sampling_steps=2)


def test_ctrl_with_score_early_draws_each_target_on_consecutive_rows() -> None:
    """The score-function baseline compares rollouts of one target: G rows per target (G = samples_per_target)."""
    labels = torch.arange(12) % 2
    for config, group in ((ShapeControlConfig(method="ctrl"), 1), (ShapeControlConfig(method="ctrl", score_early=True, samples_per_target=4), 4)):
        targets = ShapeTargets(_conditions(), labels, torch.rand(12, len(ATTRS)), config)
        _, y, _ = targets.batches(8, 32)(0)
        rows = y.view(-1, group, y.shape[1])
        assert config.rollouts_per_target == group and torch.equal(rows, rows[:, :1].expand_as(rows))
        assert len(torch.unique(y, dim=0)) == 8 // group
