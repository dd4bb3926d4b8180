"""Molecule fine-tuning objectives: each method gives a finite loss whose gradient reaches the condition
input, never the frozen prior or reward; targets follow p(c | N) with non-empty condition subsets."""
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.control import REWARD_METHODS, PayoffBatches, RewardObjective
from common.weights import read_tree, save_tree
from molctrl.batches import MoleculeBatches
from molctrl.cli import main
from molctrl.data.qm9 import load_split
from molctrl.finetune import (
    GuidanceConfig,
    PayoffScoreObjective,
    make_objective,
    target_batches,
)
from molctrl.io import read_molecules
from molctrl.noisy_predictor import N_BINS, NoisyPropertyPredictor
from molctrl.payoff import PriorPool
from molctrl.pipeline import WIDE_JUDGE_MODEL, GenerationConfig, judge_model_for
from molctrl.predictor import PROPERTIES, PredictorConfig, PropertyPredictor
from molctrl.prior import MoleculeDiffusion
from molctrl.weights import load_predictor


def test_target_batches_are_deterministic_and_condition_a_non_empty_subset(parts):
    split, _, _, conditions = parts
    batches = target_batches(conditions, 16, ("alpha", "gap"), seed=1)
    n_atoms, y, y_mask = batches(3)
    assert all(torch.equal(a, b) for a, b in zip(batches(3), (n_atoms, y, y_mask)))
    assert y_mask.any(1).all() and not y_mask[:, 2:].any()
    sizes = {int(n): set() for n in n_atoms}
    for n, row in zip(n_atoms.tolist(), y[:, 0].tolist()):
        sizes[n].add(row)
    for n, values in sizes.items():  # every target is the label of a real molecule of that size
        assert values <= set(split.properties["alpha"][split.n_atoms == n].astype(np.float32).tolist())


@pytest.mark.parametrize("method", REWARD_METHODS)
def test_each_method_trains_only_the_conditioned_model(parts, method):
    _, prior, reward, conditions = parts
    objective = RewardObjective(prior.with_condition(conditions.cond_dim), prior, reward, conditions,
                                GuidanceConfig(method=method, sampling_steps=5, grad_steps=2, train_steps=2, clip=0.2))
    loss = objective(*target_batches(conditions, 8, PROPERTIES)(0))
    assert torch.isfinite(loss)
    loss.backward()
    embed = objective.model.denoiser.cond_embed.weight.grad
    assert embed is not None and torch.isfinite(embed).all() and embed.abs().max() > 0
    assert all(p.grad is None for p in objective.prior.parameters())
    assert all(p.grad is None for p in objective.reward.parameters())
    exported = MoleculeDiffusion.from_export(objective.export())
    assert exported.config.cond_dim == conditions.cond_dim and objective.export()["guidance"]["method"] == method


def test_conditional_denoising_uses_the_labels(parts):
    split, prior, _, _ = parts
    objective, batches = make_objective({"method": "cond", "guidance": {"method": "cond"}}, prior, split, 8)
    types, positions, labels, y_mask = batches(0)
    assert all(torch.equal(a, b) for a, b in zip(batches(0), (types, positions, labels, y_mask)))  # seeded by the step
    assert torch.equal(labels, MoleculeBatches(split, 8, properties=PROPERTIES)(0)[-1]) and y_mask.any(1).all()
    loss = objective(types, positions, labels, y_mask)
    loss.backward()
    assert objective.model.denoiser.cond_embed.weight.grad.abs().max() > 0


@pytest.mark.parametrize("args", [["--method", "ctrl", "--property", "alpha", "--property", "gap"],
                                  ["--method", "cond", "--property", "all"],
                                  ["--method", "rgdm", "--maximize", "qed", "--pool-size", "64", "--pool-steps", "3"],
                                  ["--method", "rgdm-step", "--proposal", "data", "--property", "all"]],
                         ids=["ctrl", "cond", "rgdm-qed", "rgdm-step-data"])
def test_finetune_cli_trains_resumes_and_writes_a_conditioned_model(weight_files, tmp_path, args):
    run = tmp_path / "run"
    common = ["finetune", "--run-dir", str(run), "--prior", str(weight_files / "prior.safetensors"), "--reward-model",
              str(weight_files / "predictor.safetensors"), "--batch-size", "4", "--sampling-steps", "3",
              "--checkpoint-every", "1"]
    result = CliRunner().invoke(main, [*common, *args, "--steps", "1"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*common, "--steps", "2", "--resume"])
    assert result.exit_code == 0 and "resumed" in result.output, result.output
    payload = read_tree(run / "model.safetensors")
    assert payload["step"] == 2 and MoleculeDiffusion.from_export(payload).config.cond_dim == 12
    result = CliRunner().invoke(main, [*common, "--resume"])  # without --steps: the recorded 2, not the default
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert json.loads((run / "run.json").read_text())["train"]["steps"] == 2


def test_payoff_batches_resample_pool_molecules_of_the_target_size_by_their_likelihood(parts):
    split, prior, reward, conditions = parts
    pool = PriorPool.from_split(split).scored(prior, reward)
    assert pool.scores.shape == (len(split), 6) and pool.seconds > 0
    targets = target_batches(conditions, 8, PROPERTIES, seed=2)
    sharp = PayoffBatches(pool, reward, targets, temperature=1e-6)
    types_b, positions_b, y, y_mask = sharp(5)
    assert all(torch.equal(a, b) for a, b in zip(sharp(5), (types_b, positions_b, y, y_mask)))
    n_atoms = targets(5)[0]
    g = torch.Generator().manual_seed(0)
    assert torch.equal((types_b >= 0).sum(1), n_atoms) and torch.allclose(sharp.pick(*targets(5), g)[1], torch.ones(8))
    for k in range(8):  # at τ → 0 the pick is the most likely pool molecule of the target's size
        same = torch.nonzero(pool.n_atoms == n_atoms[k]).view(-1)
        r = reward.log_likelihood(pool.scores[same], y[k].expand(len(same), -1), y_mask[k].expand(len(same), -1))
        assert torch.equal(types_b[k], pool.types[same[r.argmax()], : types_b.shape[1]])
    _, mild = PayoffBatches(pool, reward, targets, temperature=1e6).pick(*targets(5), g)
    assert torch.all(mild > 0.9 * torch.stack([(pool.n_atoms == n).sum() for n in n_atoms]))  # ~uniform
    assert sharp.stats["ess"] == pytest.approx(1.0)  # the progress line's mean


def test_data_proposal_rgdm_resamples_the_training_molecules_without_a_pool_file(parts, weight_files, tmp_path):
    split, prior, _, _ = parts
    spec = {"reward_model": str(weight_files / "predictor.safetensors"), "maximize": None, "method": "rgdm",
            "guidance": asdict(GuidanceConfig(method="rgdm", proposal="data", properties=("alpha",)))}
    objective, batches = make_objective(spec, prior, split, 8, seed=0, pool_path=tmp_path / "pool.safetensors")
    assert batches.pool.sampling_steps == 0 and len(batches.pool.types) == len(split)
    assert not (tmp_path / "pool.safetensors").exists()  # the split itself is the pool: nothing to keep
    types, positions, y, y_mask = batches(0)
    rows = [int(np.flatnonzero((split.positions[:, : positions.shape[1]] == p.numpy()).all((1, 2)))[0])
            for p in positions]  # each picked molecule is a training molecule
    assert all(torch.equal(types[k], torch.from_numpy(split.types[r, : types.shape[1]]).long())
               for k, r in enumerate(rows))
    assert objective(types, positions, y, y_mask).isfinite()


@pytest.mark.parametrize("targets", ["predicted", "independent"])
def test_step_level_rgdm_on_data_states_fits_the_shifted_prior(parts, weight_files, targets):
    """At the start the model is the prior, so the loss is the pay-off shift's own square; its gradient
    reaches the conditioned model only. Predicted targets come with the reward model's predictions of
    each batch molecule. A reward without targets has no likelihood to shift by."""
    split, prior, _, _ = parts
    spec = {"reward_model": str(weight_files / "predictor.safetensors"), "maximize": None, "method": "rgdm-step",
            "guidance": asdict(GuidanceConfig(method="rgdm-step", proposal="data", score_targets=targets))}
    objective, batches = make_objective(spec, prior, split, 8, seed=0)
    assert isinstance(objective, PayoffScoreObjective)
    batch = batches(0)
    if targets == "predicted":
        types, positions, predicted = batch
        x, mask = prior.encode(types, positions)
        assert torch.allclose(predicted, objective.reward.predict(x, mask), atol=1e-4)
    else:
        assert len(batch) == 2
    torch.manual_seed(0)
    loss = objective(*batch)
    assert loss > 0 and objective.stats["shift"] > 0
    loss.backward()
    assert objective.model.denoiser.cond_embed.weight.grad.abs().max() > 0
    assert all(p.grad is None for p in [*objective.prior.parameters(), *objective.reward.parameters()])
    with pytest.raises(ValueError, match="needs property targets"):
        make_objective(spec | {"maximize": "qed"}, prior, split, 8)
    low = asdict(GuidanceConfig(method="rgdm-step", proposal="data", score_max_step=0))
    objective, _ = make_objective(spec | {"guidance": low}, prior, split, 8, seed=0)
    assert objective(*batch) < 1e-2 * loss.item()  # at t = 0 the shift is of order σ₀ and ε_θ = ε_pre


def test_finetune_cli_rejects_contradictory_requests(weight_files, tmp_path):
    for args, message in [([], "either --property"), (["--property", "mu", "--maximize", "qed"], "either --property"),
                          (["--method", "cond", "--maximize", "qed"], "needs labels")]:
        result = CliRunner().invoke(main, ["finetune", "--run-dir", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("method, guidance_scale", [("ctrl", "1"), ("ctrl", "2.5"), ("guidance", "1")])
def test_generate_writes_sdf_with_targets_and_predictions_and_a_png(weight_files, conditioned_model, tmp_path, method,
                                                                     guidance_scale):
    out = tmp_path / "mols.sdf"
    model = conditioned_model if method == "ctrl" else weight_files / "prior.safetensors"
    result = CliRunner().invoke(main, ["generate", "--target", "alpha=60", "--target", "mu=2.5", "-n", "5",
                                       "--out", str(out), "--particles", "0", "--method", method, "--model", str(model),
                                       "--guidance-scale", guidance_scale,
                                       "--reward-model", str(weight_files / "predictor.safetensors"),
                                       "--evaluator", str(weight_files / "predictor.safetensors"), "--steps", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {"validity", "mol_stability", "mae_alpha", "mae_mu"} <= set(summary)
    assert summary["guidance_scale"] == float(guidance_scale)
    assert summary["guidance_window"] == ([0, 150] if method == "guidance" else None)
    molecules = read_molecules(out)
    assert len(molecules) == 5 and molecules[0].properties["target_alpha"] == 60.0
    assert "predicted_mu" in molecules[0].properties
    assert (tmp_path / "mols.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("proposal, extra_calls, precision", [("prior", 0, "fp32"), ("guidance", 0, "bf16"),
                                                               ("ctrl", 1, "bf16")])
def test_generate_steers_particles_and_records_each_molecule_s_reward_and_weight(weight_files, conditioned_model,
                                                                              tmp_path, proposal, extra_calls, precision):
    out = tmp_path / "steered.sdf"
    model = ["--model", str(conditioned_model)] if proposal == "ctrl" else []
    start = ["--potential-from", "30"] if proposal == "guidance" else []
    pick = ["--pick", "sample"] if proposal == "prior" else []
    result = CliRunner().invoke(main, ["generate", "--target", "alpha=60", "-n", "3", "--out", str(out), "--particles", "4",
                                       "--proposal", proposal, *model, *start, *pick,
                                       "--prior", str(weight_files / "prior.safetensors"),
                                       "--reward-model", str(weight_files / "predictor.safetensors"),
                                       "--evaluator", str(weight_files / "predictor.safetensors"), "--steps", "3",
                                       "--precision", precision, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["method"] == "smc" and summary["particles"] == 4 and 1 <= summary["mean_ess"] <= 4
    assert summary["precision"] == precision
    assert summary["temperature"] == 0.25 and summary["potential_from"] == (30 if start else 400)
    assert summary["pick"] == ("sample" if pick else "best")  # best: the default for targets
    steps = 4  # 3 respaced transitions and the final step
    assert summary["network_calls_per_molecule"] == 4 * (steps + extra_calls * (steps - 1))  # no proposal on the last
    assert {"uniqueness", "novelty", "mae_alpha"} <= set(summary)
    molecules = read_molecules(out)
    assert len(molecules) == 3 and all({"reward", "log_weight", "predicted_alpha"} <= set(m.properties) for m in molecules)


def test_a_second_predictor_judges_the_finished_particles(weight_files, tmp_path):
    reward = str(weight_files / "predictor.safetensors")

    def steered(name: str, *judge: str) -> tuple[dict, list]:
        out = tmp_path / f"{name}.sdf"
        result = CliRunner().invoke(main, ["generate", "--target", "alpha=60", "-n", "2", "--out", str(out), "--particles",
                                           "3", "--prior", str(weight_files / "prior.safetensors"), "--reward-model",
                                           reward, *judge, "--evaluator", reward, "--steps", "3",
                                           "--precision", "fp32", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1]), read_molecules(out)

    alone, steered_alone = steered("alone", "--judge-model", reward)
    judged, steered_judged = steered("judged", "--judge-model", "qm9-noh-egnn-Db")
    default, steered_default = steered("default")
    # α: xTB judges no target, so the judge is the predictor alone: by default the wider one
    assert steered_judged[0].title.endswith("final weights by the predictor qm9-noh-egnn-Db")
    assert steered_default[0].title.endswith(f"final weights by the predictor {WIDE_JUDGE_MODEL}")
    assert "final weights" not in steered_alone[0].title  # the steering reward judges itself
    assert (alone["judge_model"], judged["judge_model"], default["judge_model"]) == (None, "qm9-noh-egnn-Db",
                                                                                    WIDE_JUDGE_MODEL)
    # the same seed and steering reward: the final rewards are the judge's
    rewards = [[m.properties["reward"] for m in run] for run in (steered_alone, steered_judged, steered_default)]
    assert rewards[0] != rewards[1] and rewards[0] != rewards[2]
    once = CliRunner().invoke(main, ["generate", "--target", "alpha=60", "--particles", "0", "--judge-model",
                                     "qm9-noh-egnn-Db", "--out", str(tmp_path / "once.sdf")])
    assert once.exit_code == 2 and "judge_model 'qm9-noh-egnn-Db' weighs the particles of smc" in once.output
    assert not (tmp_path / "once.sdf").exists()


def test_the_default_judge_is_the_wider_predictor_only_where_xtb_judges_no_target():
    config = GenerationConfig()
    assert judge_model_for(config, ["alpha"]) == judge_model_for(config, ["alpha", "Cv"]) == WIDE_JUDGE_MODEL
    assert judge_model_for(config, ["gap"]) is judge_model_for(config, ["alpha", "mu"]) is None  # the steering reward
    assert judge_model_for(config, []) is None  # a maximised score judges itself
    assert judge_model_for(GenerationConfig(judge_model="qm9-noh-egnn-Db"), ["gap"]) == "qm9-noh-egnn-Db"
    assert judge_model_for(GenerationConfig(judge_model=config.reward_model), ["alpha"]) is None


def test_maximizing_keeps_its_measured_defaults_a_draw_by_the_weights(weight_files, tmp_path):
    out = tmp_path / "qed.sdf"
    result = CliRunner().invoke(main, ["generate", "--maximize", "qed", "-n", "2", "--out", str(out), "--particles", "2",
                                       "--prior", str(weight_files / "prior.safetensors"), "--steps", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["pick"], summary["temperature"], summary["potential_from"]) == ("sample", 0.002, 100)


def test_generate_reports_bad_requests_in_one_line(weight_files, tmp_path):
    out = ["--out", str(tmp_path / "m.sdf")]
    once = ["--particles", "0"]
    cases = [([], "either --target"), (["--target", "alpha80"], "expected NAME=VALUE"),
             (["--target", "beta=1"], "unknown property 'beta'"), (["--target", "mu=high"], "is not a number"),
             ([*once, "--maximize", "qed", "--method", "guidance"], "needs a differentiable reward"),
             (["--maximize", "qed", "--proposal", "guidance"], "needs a differentiable reward"),
             ([*once, "--target", "mu=1", "--model", str(weight_files / "prior.safetensors")], "not a conditioned model"),
             (["--target", "mu=1", "--model", str(weight_files / "prior.safetensors")], "model: the conditioned model of an rgdm or ctrl proposal"),
             ([*once, "--target", "mu=1", "--method", "guidance", "--guidance-scale", "2"], "needs property targets and a"),
             (["--maximize", "qed", "--guidance-scale", "2"], "needs property targets and a"),
             (["--target", "mu=1", "--guidance-window", "0:10"], "only method guidance"),
             ([*once, "--target", "mu=1", "--method", "guidance", "--guidance-window", "10"], "expected LO:HI"),
             ([*once, "--target", "mu=1", "--method", "guidance", "--guidance-window", "0:5000"],
              "guidance window 0:5000 reaches beyond the model's 1000 diffusion steps"),
             (["--target", "mu=1", "--method", "ctrl"], "--method samples each molecule once"),
             (["--target", "mu=1", "--potential-from", "0"], "'--potential-from': 0 is not in the range x>=1"),
             (["--target", "mu=1", "--pick", "mode"], "'--pick': 'mode' is not one of 'sample', 'best'"),
             (["--target", "alpha=1e9"], "alpha=1e+09 is outside the labels the models were trained on")]
    for args, message in cases:
        result = CliRunner().invoke(main, ["generate", *args, *out])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "m.sdf").exists()


def test_noise_aware_predictor_trains_calibrates_per_noise_level_and_guides(weight_files, tmp_path):
    run = tmp_path / "noisy"
    result = CliRunner().invoke(main, ["train", "predictor", "--run-dir", str(run), "--noise-aware",
                                       str(weight_files / "prior.safetensors"), "--hidden", "8", "--layers", "1",
                                       "--limit", "64", "--valid-limit", "32", "--epochs", "1", "--batch-size", "32"])
    assert result.exit_code == 0, result.output
    noisy = load_predictor(run / "model.safetensors")
    assert isinstance(noisy, NoisyPropertyPredictor) and noisy.calibration.shape == (N_BINS, 6)
    types, pos = torch.tensor([[0, 1, 2, -1]]), torch.randn(1, 4, 3)
    z, mask = noisy.noised(types, pos, torch.tensor([25]))  # T = 50: t = 0.5
    y, y_mask = torch.full((1, 6), 50.0), torch.zeros(1, 6, dtype=torch.bool)
    y_mask[0, 0] = True
    log_p = noisy.log_likelihood(PROPERTIES, y, y_mask)(z, torch.tensor([0.5]), mask)
    f = noisy.regress_state(z, torch.tensor([0.5]), mask)[0, 0]
    s = noisy.calibration[5, 0]
    assert torch.allclose(log_p, -0.5 * ((50.0 - f) / s) ** 2 - s.log() - 0.5 * np.log(2 * np.pi), atol=1e-5)
    out = tmp_path / "guided.sdf"
    result = CliRunner().invoke(main, ["generate", "--target", "alpha=60", "-n", "3", "--out", str(out), "--particles", "0",
                                       "--method", "guidance", "--model", str(weight_files / "prior.safetensors"),
                                       "--reward-model", str(run / "model.safetensors"),
                                       "--evaluator", str(weight_files / "predictor.safetensors"), "--steps", "3"])
    assert result.exit_code == 0, result.output


def test_a_run_can_start_from_another_conditioned_model(parts, weight_files, conditioned_model, tmp_path):
    subset, prior, _, _ = parts
    split = load_split("qm9-noh", "Db")  # the fixture model's conditions are fitted on the whole split
    spec = {"reward_model": str(weight_files / "predictor.safetensors"), "maximize": None, "method": "ctrl",
            "guidance": asdict(GuidanceConfig(kl="continuous", kl_cap=100.0)), "init": str(conditioned_model)}
    objective, _ = make_objective(spec, prior, split, 4)
    start = MoleculeDiffusion.from_export(read_tree(conditioned_model))
    assert all(torch.equal(a, b) for a, b in zip(objective.model.state_dict().values(), start.state_dict().values()))
    assert objective.model.denoiser.cond_embed.weight.abs().max() > 0  # not the prior's zero embedding
    with pytest.raises(ValueError, match="prior.safetensors: not a conditioned molecule model"):
        make_objective(spec | {"init": str(weight_files / "prior.safetensors")}, prior, split, 4)
    with pytest.raises(ValueError, match="normalised on other data"):
        make_objective(spec, prior, subset, 4)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes.pt: not a weights file"):
        make_objective(spec | {"init": str(tmp_path / "notes.pt")}, prior, split, 4)


def test_a_resumed_run_does_not_need_its_init_file(weight_files, conditioned_model, tmp_path):
    init = tmp_path / "init.safetensors"
    init.write_bytes(conditioned_model.read_bytes())
    run = tmp_path / "run"
    common = ["finetune", "--run-dir", str(run), "--prior", str(weight_files / "prior.safetensors"), "--batch-size", "4",
              "--checkpoint-every", "1"]
    result = CliRunner().invoke(main, [*common, "--method", "cond", "--property", "all", "--init", str(init),
                                       "--steps", "1"])
    assert result.exit_code == 0, result.output
    init.unlink()  # the checkpoint holds everything a resumed run needs
    result = CliRunner().invoke(main, [*common, "--steps", "2", "--resume"])
    assert result.exit_code == 0, result.output


def test_payoff_candidates_are_drawn_from_the_target_size_and_tend_to_the_full_pool(parts):
    split, prior, reward, conditions = parts
    pool = PriorPool.from_split(split).scored(prior, reward)
    targets = target_batches(conditions, 8, PROPERTIES, seed=2)
    n_atoms = targets(5)[0]
    few = PayoffBatches(pool, reward, targets, temperature=1e-6, candidates=3)
    rows = few._candidates(n_atoms, torch.Generator().manual_seed(0))
    assert rows.shape == (8, 3) and torch.equal(pool.n_atoms[rows], n_atoms.unsqueeze(1).expand(-1, 3))
    assert torch.all(few.pick(*targets(5), torch.Generator().manual_seed(0))[1] <= 3)  # the ESS of 3 candidates
    exact = PayoffBatches(pool, reward, targets, temperature=1e-6)(5)
    enough = PayoffBatches(pool, reward, targets, temperature=1e-6, candidates=len(split))(5)
    assert all(torch.equal(a, b) for a, b in zip(exact, enough))  # K ≥ every group: the whole group, as before


def test_a_run_reuses_another_run_s_pool_rescored_by_its_own_reward(parts, weight_files, tmp_path):
    split, _, _, _ = parts
    common = ["finetune", "--method", "rgdm", "--property", "alpha", "--prior", str(weight_files / "prior.safetensors"),
              "--batch-size", "4", "--steps", "1"]
    first = CliRunner().invoke(main, [*common, "--run-dir", str(tmp_path / "a"), "--pool-size", "12", "--pool-steps", "3",
                                      "--reward-model", str(weight_files / "predictor.safetensors")])
    assert first.exit_code == 0, first.output
    labels = split.labels(PROPERTIES)
    torch.manual_seed(1)
    other = PropertyPredictor(PredictorConfig(hidden=16, n_layers=1), labels.mean(0), labels.std(0))
    other.calibration = torch.ones(6)
    save_tree(other.export(), tmp_path / "other.safetensors")
    second = CliRunner().invoke(main, [*common, "--run-dir", str(tmp_path / "b"), "--pool",
                                       str(tmp_path / "a" / "pool.safetensors"),
                                       "--reward-model", str(tmp_path / "other.safetensors")])
    assert second.exit_code == 0, second.output
    a, b = (PriorPool.load(tmp_path / run / "pool.safetensors") for run in ("a", "b"))
    assert torch.equal(a.types, b.types) and torch.equal(a.positions, b.positions)  # the same molecules,
    assert b.sampling_steps == 3 and not torch.allclose(a.scores, b.scores)  # scored by the run's own reward
