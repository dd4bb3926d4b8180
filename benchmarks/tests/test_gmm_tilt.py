"""CTRL, RGDM and guidance against closed form: a 2-D Gaussian-mixture prior tilted by a Gaussian
likelihood of its first coordinate, p(x)·N(y; x₁, s²)^(1/α), is again a known mixture.

The prior is the mixture's exact ε* (no training error); the conditioned model adds a small network
initialised at zero. Both methods are trained with 20-step respaced sampling. What they can reach is
the tilt of that 20-step *chain* (its marginal is the mixture up to the discretisation), so samples are
compared with (a) the chain's own tilt, drawn exactly by importance resampling of 200,000 prior-chain
samples, tightly, and (b) the closed-form tilted mixture, more loosely. Statistics per component use
soft assignments to the prior's components, the same for every sample set. Classifier guidance with
the mixture's exact noisy likelihood p_t(y | z_t) must sample the tilt; step-level RGDM and
reconstruction guidance are approximations and are checked for direction only.
"""
import pytest
import torch
from torch import nn

from benchmarks.gmm import MixtureDenoiser
from benchmarks.gmm_tilt import (
    DIFFUSION,
    PRIOR,
    REWARD,
    SCHEDULE,
    STEPS,
    Y,
    chain_tilt,
    clean_log_likelihood,
    exact_tilt,
    guided,
    noisy_log_likelihood,
    prior_samples,
    samples,
    setup,
    stats,
    steered,
    train,
    train_payoff_score,
    train_prior_pool,
    widened_log_likelihood,
)
from common.ctrl import ctrl_loss, others_mean
from common.ddpo import ddpo_loss, sample_trajectories
from common.guidance import GuidedDenoiser
from common.rgdm import rgdm_step_loss
from common.selection import best_of_n


def _assert_close(found, reference, weight_tol, mean_tol, cov_rel_tol):
    (w, m, c), (w_ref, m_ref, c_ref) = found, reference
    assert (w - w_ref).abs().max() < weight_tol, (w, w_ref)
    assert (m - m_ref).abs().max() < mean_tol, (m, m_ref)
    rel = torch.linalg.matrix_norm(c - c_ref) / torch.linalg.matrix_norm(c_ref)
    assert rel.max() < cov_rel_tol, (c, c_ref)


@pytest.fixture(scope="module")
def references():
    return {coefficient: (stats(*chain_tilt(coefficient)), stats(exact_tilt(coefficient))) for coefficient in (1.0, 0.5)}


def test_rgdm_with_prior_proposals_lands_on_the_tilted_mixture(references):
    """Prior samples resampled by exp(r) (no importance ratio) and fitted by the denoising loss."""
    chain, exact = references[1.0]
    x, ess = train_prior_pool()
    assert 0.5 * 20_000 < ess < 20_000  # a mild tilt: most of the pool carries weight
    found = stats(x)
    _assert_close(found, chain, weight_tol=0.05, mean_tol=0.12, cov_rel_tol=0.2)  # the pool is of chain samples
    _assert_close(found, exact, weight_tol=0.07, mean_tol=0.12, cov_rel_tol=0.3)  # and the chain is narrower


@pytest.mark.parametrize("method", ["ctrl", "rgdm"])
def test_lands_on_the_tilted_mixture_at_coefficient_one(method, references):
    chain, exact = references[1.0]
    found = stats(train(method, 1.0))
    _assert_close(found, chain, weight_tol=0.05, mean_tol=0.1, cov_rel_tol=0.15)
    _assert_close(found, exact, weight_tol=0.07, mean_tol=0.12, cov_rel_tol=0.25)
    assert stats(prior_samples())[0][1] + 0.25 < found[0][1]  # not vacuous: the tilt moved 0.4 -> ~0.73 of the mass


@pytest.mark.parametrize("method", ["ctrl", "rgdm"])
def test_a_smaller_coefficient_sharpens_the_tilt_as_theory_says(method, references):
    chain, _ = references[0.5]
    found = stats(train(method, 0.5))
    _assert_close(found, chain, weight_tol=0.05, mean_tol=0.1, cov_rel_tol=0.2)  # left component: ~14 % of the mass
    assert found[0][1] > references[1.0][0][0][1] + 0.08  # more mass moved than at coefficient 1
    assert found[1][0, 0] > references[1.0][0][1][0, 0] + 0.2  # the left component moves towards y


def test_the_continuous_time_kl_tilts_further_than_the_chain_on_a_coarse_grid(references):
    """On 20 steps the continuous KL charges the steps next to the noise and the data far less than the
    chain's own KL does, so at α = 1 CTRL overshoots the tilt (``python -m benchmarks.gmm_tilt``: 0.89
    of the mass on the right component against 0.73)."""
    chain, _ = references[1.0]
    weights, _, _ = stats(train("ctrl", 1.0, kl="continuous"))
    assert weights[1] > chain[0][1] + 0.08


def test_ctrl_kl_cap_leaves_out_the_trajectories_above_it():
    prior, model, _, mask, y = setup(lr=1e-2)
    with torch.no_grad():
        model.net[-1].bias.fill_(0.3)  # the model departs from the prior: every trajectory has KL > 0
    kwargs = {"n_sampling_steps": STEPS, "checkpoint": False}
    full, found = ctrl_loss(DIFFUSION, model, prior, REWARD, mask, 2, y, generator=torch.Generator().manual_seed(0),
                            **kwargs)
    same, capped = ctrl_loss(DIFFUSION, model, prior, REWARD, mask, 2, y, kl_cap=float("inf"),
                             generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.allclose(full, same) and capped["capped"] == 0.0 and "capped" not in found
    none, capped = ctrl_loss(DIFFUSION, model, prior, REWARD, mask, 2, y, kl_cap=0.0, **kwargs)
    assert none.item() == 0.0 and capped["capped"] == 1.0
    half, capped = ctrl_loss(DIFFUSION, model, prior, REWARD, mask, 2, y, kl_cap=found["kl"],
                             generator=torch.Generator().manual_seed(0), **kwargs)
    assert 0.4 < capped["capped"] < 0.6 and not torch.allclose(half, full)  # the median splits the batch


class NoGradient(nn.Module):
    """The same reward, declared non-differentiable (the estimators must not use its gradient)."""

    differentiable = False

    def forward(self, x, mask, y=None, y_mask=None):
        with torch.no_grad():
            return REWARD(x, mask, y, y_mask)


def test_ctrl_with_a_reward_without_gradients_moves_towards_the_tilt():
    """The score-function estimator (the reward read as values only): E[(R − b)·∇ log p_θ(τ)] −
    α∇E[Σ KL] climbs the same objective as the pathwise one, with more variance."""
    prior, model, optimizer, mask, y = setup(lr=1e-2)
    for _ in range(300):
        loss, _ = ctrl_loss(DIFFUSION, model, prior, NoGradient(), mask, 2, y, n_sampling_steps=STEPS, checkpoint=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights, means, _ = stats(samples(model))
    prior_weights, prior_means, _ = stats(prior_samples())
    assert prior_weights[1] < 0.45 and 0.62 < weights[1] < 0.82  # 0.40 -> 0.71 (the chain's tilt: 0.73)
    assert (means[:, 1] - prior_means[:, 1]).abs().max() < 0.2


def _ctrl_mass_on_the_favoured_component(**estimator) -> float:
    prior, model, optimizer, mask, y = setup(lr=1e-2)
    for _ in range(300):
        loss, _ = ctrl_loss(DIFFUSION, model, prior, REWARD, mask, 2, y, n_sampling_steps=STEPS, checkpoint=False,
                            **estimator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return stats(samples(model))[0][1].item()


def test_ctrl_truncated_to_the_last_step_needs_the_score_function_of_the_earlier_ones():
    """Which component a sample joins is decided by the chain's early steps, where the pathwise gradient
    of one trajectory is near zero: back-propagated through the last step only, CTRL stays at the prior's
    mass (0.40); with the score-function term of the other 19 steps it reaches the tilt (0.73), as the
    full pathwise gradient does (measured: 0.39, 0.72, 0.71)."""
    assert _ctrl_mass_on_the_favoured_component(grad_steps=1) < 0.45
    assert 0.62 < _ctrl_mass_on_the_favoured_component(grad_steps=1, score_early=True) < 0.82


def test_the_leave_one_out_baseline_reads_the_other_kept_rows_of_a_group():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 40.0])
    keep = torch.tensor([True, True, True, True, False, True])
    assert torch.equal(others_mean(values, keep, group_size=3), torch.tensor([2.5, 2.0, 1.5, 40.0, 25.0, 10.0]))
    assert others_mean(values, keep)[0].item() == pytest.approx((2 + 3 + 10 + 40) / 4)
    with pytest.raises(ValueError, match="multiple of group_size 4"):
        others_mean(values, keep, group_size=4)


@pytest.mark.parametrize("reward", [REWARD, NoGradient()], ids=["gradient-shift", "candidates"])
def test_step_level_rgdm_moves_towards_the_tilt_without_drift(reward):
    prior, model, optimizer, mask, y = setup(lr=1e-2)
    for _ in range(300):
        loss, _ = rgdm_step_loss(DIFFUSION, model, prior, reward, mask, 2, y, radius=0.5, n_sampling_steps=STEPS,
                                 n_train_steps=4, n_candidates=16)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights, means, _ = stats(samples(model))
    prior_weights, prior_means, _ = stats(prior_samples())
    assert weights[1] > prior_weights[1] + 0.05  # mass moves towards y, as the tilt does (0.40 -> 0.75)
    # the unrewarded coordinate stays near the tilt's (an unanchored pay-off step drifts it by ~1)
    assert (means[:, 1] - prior_means[:, 1]).abs().max() < 0.15


def test_classifier_guidance_with_the_exact_noisy_likelihood_samples_the_tilt():
    _assert_close(stats(guided(noisy_log_likelihood, "classifier")), stats(exact_tilt()),
                  weight_tol=0.02, mean_tol=0.06, cov_rel_tol=0.1)


def test_payoff_score_rgdm_with_the_exact_noisy_likelihood_lands_on_the_tilt():
    """Step-level RGDM at noised prior samples: with the exact p_t(y | z_t) the pay-off ε is the tilted
    mixture's own, so the model fitted to it by regression samples the tilt (on 100 steps, as the
    classifier guidance it distils)."""
    _assert_close(stats(train_payoff_score(noisy_log_likelihood, "classifier")), stats(exact_tilt()),
                  weight_tol=0.03, mean_tol=0.08, cov_rel_tol=0.15)


def test_reconstruction_guidance_moves_towards_y_short_of_the_tilt():
    """Through x̂₀ with a Gaussian posterior (Tweedie's Jacobian α_t v_t/σ_t², one mode wide), the mass on
    the right component rises from the prior's 0.40 towards the tilt's 0.75 but stops short of it
    (``python -m benchmarks.gmm_tilt``: 0.67 plain, 0.59 with the likelihood widened by v_t, which
    flattens it at high noise). The pay-off score RGDM fitted to the widened shift lands where that
    guidance does."""
    plain, widened = (float(stats(guided(f, "reconstruction"))[0][1])
                      for f in (clean_log_likelihood, widened_log_likelihood()))
    prior, exact = (float(stats(x)[0][1]) for x in (prior_samples(), exact_tilt()))
    assert prior + 0.1 < widened < plain < exact - 0.03, (prior, widened, plain, exact)
    distilled = float(stats(train_payoff_score(widened_log_likelihood(), "reconstruction"))[0][1])
    assert abs(distilled - widened) < 0.03, (distilled, widened)
    with pytest.raises(ValueError, match="mode must be"):
        GuidedDenoiser(MixtureDenoiser(PRIOR, SCHEDULE), DIFFUSION, clean_log_likelihood, mode="noisy")


def test_guidance_window_shifts_only_the_steps_inside_it():
    prior = MixtureDenoiser(PRIOR, SCHEDULE)
    full = GuidedDenoiser(prior, DIFFUSION, clean_log_likelihood, mode="reconstruction")
    late = GuidedDenoiser(prior, DIFFUSION, clean_log_likelihood, mode="reconstruction", window=(0.5, 1.0))
    z, mask = torch.randn(6, 1, 2), torch.ones(6, 1, dtype=torch.bool)
    t = torch.tensor([0.2, 0.5, 0.7, 0.9, 0.3, 1.0])
    eps = prior(z, t, mask)
    inside = t > 0.5
    shift, windowed = full.shift(z, t, mask, eps), late.shift(z, t, mask, eps)
    assert shift.abs().amax((1, 2)).gt(0).all()
    assert torch.equal(windowed[inside], shift[inside]) and not windowed[~inside].any()
    assert not late.shift(z[:2], t[:2], mask[:2], eps[:2]).any()  # no row inside: zero shift, early return


def test_ddpo_raises_the_reward_without_a_prior_anchor():
    _, model, optimizer, mask, y = setup(lr=3e-3)
    first = None
    for _ in range(40):
        trajectories = sample_trajectories(DIFFUSION, model, mask, 2, STEPS)
        rewards = REWARD(trajectories.x, mask, y)
        first = rewards.mean() if first is None else first
        for _ in range(2):
            loss = ddpo_loss(DIFFUSION, model, trajectories, rewards, list(range(len(trajectories.steps))), clip=0.2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert REWARD(sample_trajectories(DIFFUSION, model, mask, 2, STEPS).x, mask, y).mean() > first + 0.3


def test_best_of_n_keeps_the_highest_reward_per_row():
    mask = torch.ones(4000, 1, dtype=torch.bool)
    y = torch.full((4000, 1), Y)

    def draw():
        return DIFFUSION.sample(MixtureDenoiser(PRIOR, SCHEDULE), mask, 2, STEPS)

    _, one = best_of_n(draw, REWARD, mask, 1, y)
    x, four = best_of_n(draw, REWARD, mask, 4, y)
    assert torch.allclose(REWARD(x, mask, y), four) and four.mean() > one.mean() + 0.5


def _ess_fraction(ess, k):
    return float(ess[-1].mean()) / k  # the last resampling decision's ESS, the one the output is drawn with


def test_smc_with_the_prior_as_proposal_lands_on_the_tilt(references):
    chain, exact = references[1.0]
    x, _ = steered(16, "prior")
    _assert_close(stats(x), chain, weight_tol=0.03, mean_tol=0.06, cov_rel_tol=0.1)
    _assert_close(stats(x), exact, weight_tol=0.04, mean_tol=0.08, cov_rel_tol=0.25)  # the 20-step chain is narrower


def test_smc_corrects_a_poor_proposal(references):
    chain, _ = references[1.0]
    alone = stats(steered(1, "reversed")[0])
    assert alone[0][1] < 0.3  # steering away from y: most of the mass on the wrong side
    _assert_close(stats(steered(64, "reversed")[0]), chain, weight_tol=0.03, mean_tol=0.06, cov_rel_tol=0.12)


def test_a_good_proposal_needs_fewer_particles(references):
    chain, _ = references[1.0]
    (x_guided, ess_guided), (x_prior, ess_prior) = steered(4, "guided"), steered(4, "prior")
    _assert_close(stats(x_guided), chain, weight_tol=0.03, mean_tol=0.06, cov_rel_tol=0.12)
    with pytest.raises(AssertionError):  # four prior particles are not enough
        _assert_close(stats(x_prior), chain, weight_tol=0.03, mean_tol=0.06, cov_rel_tol=0.12)
    assert _ess_fraction(ess_guided, 4) > _ess_fraction(ess_prior, 4) + 0.1
