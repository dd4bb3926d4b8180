"""The diffusion core against closed forms."""
import itertools

import numpy as np
import pytest
import torch

from common.diffusion import (
    SOLVERS,
    GaussianDiffusion,
    Solver,
    logsnr_steps,
    respaced_steps,
)
from common.schedules import NoiseSchedule, polynomial_alpha2
from common.spaces import PointSetSpace
from tests.geometry import is_centered


def test_polynomial_2_matches_edm_formula():
    T, s = 1000, 1e-5
    alpha2 = polynomial_alpha2(T, 2.0, s)
    t = np.arange(T + 1) / T
    raw = (1 - t**2) ** 2
    # away from the end no step ratio is clipped, so the closed form holds
    assert np.allclose(alpha2[:900], (1 - 2 * s) * raw[:900] + s, rtol=1e-12, atol=0)
    assert alpha2[0] == pytest.approx(1 - s) and alpha2[-1] == pytest.approx(s, rel=1e-3)
    ratios = alpha2[1:] / alpha2[:-1]
    assert np.all(ratios <= 1) and np.all(np.diff(np.log(alpha2 - s + 1e-300)) >= np.log(1e-3) - 1e-9)


@pytest.mark.parametrize("name", ["polynomial_2", "cosine", "linear"])
def test_schedules_are_monotone(name):
    g = NoiseSchedule(name, 200).gamma_table
    assert torch.all(g[1:] > g[:-1])
    a, s = NoiseSchedule.alpha(g), NoiseSchedule.sigma(g)
    assert torch.allclose(a**2 + s**2, torch.ones_like(g), atol=1e-6)


def test_linear_schedule_is_cumulative_product_of_betas():
    g = NoiseSchedule("linear", 1000).gamma_table.double()
    alpha2 = torch.sigmoid(-g)[1:]
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(alpha2, torch.cumprod(1 - betas, 0), rtol=1e-5)


def test_bad_schedule_name():
    with pytest.raises(ValueError, match="unknown noise schedule 'foo'"):
        NoiseSchedule("foo", 10)


def test_respaced_steps():
    assert respaced_steps(1000, None) == list(range(1000, -1, -1))
    steps = respaced_steps(1000, 50)
    assert steps[0] == 1000 and steps[-1] == 0 and len(steps) == 51
    assert all(a > b for a, b in itertools.pairwise(steps))
    with pytest.raises(ValueError):
        respaced_steps(1000, 0)


@pytest.mark.parametrize("name", ["polynomial_2", "linear"])
def test_logsnr_steps_are_even_in_log_snr(name):
    gamma = NoiseSchedule(name, 1000).gamma_table
    steps = logsnr_steps(gamma, 25)
    assert steps[0] == 1000 and steps[-1] == 0 and len(steps) == 26
    assert all(a > b for a, b in itertools.pairwise(steps))
    even = torch.linspace(float(gamma[-1]), float(gamma[0]), 26)
    width = (gamma[-1] - gamma[0]) / 25
    # every visited step is the one of nearest log-SNR; integer steps are at most half a gap apart in γ
    gaps = (gamma[1:] - gamma[:-1]).max()
    assert torch.all((gamma[steps] - even).abs() <= gaps / 2 + 1e-4)
    assert (gamma[steps] - even).abs().max() < 0.3 * width  # not the uniform grid's spacing
    uniform = respaced_steps(1000, 25)
    assert (gamma[uniform] - even).abs().max() > 0.3 * width
    with pytest.raises(ValueError, match="positive"):
        logsnr_steps(gamma, 0)


def test_solver_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown step spacing 'cubic'"):
        Solver("cubic")
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        Solver(order=3)


def _diffusion(centered=0, T=100):
    return GaussianDiffusion(NoiseSchedule("polynomial_2", T), PointSetSpace(centered)).double()


def test_reverse_step_is_the_exact_posterior():
    """With the true ε, p(z_s|z_t) is q(z_s|z_t,x): mean = α_s σ²_{t|s}/σ_t² x + α_{t|s} σ_s²/σ_t² z_t."""
    diff = _diffusion()
    torch.manual_seed(0)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    t, s = torch.tensor([90, 50, 10]), torch.tensor([80, 20, 9])
    z, eps = diff.add_noise(x, t, mask)
    mean, std = diff.reverse_step(z, eps, t, s)
    a2 = torch.sigmoid(-diff.schedule.gamma(t).double()).view(-1, 1, 1)
    a2s = torch.sigmoid(-diff.schedule.gamma(s).double()).view(-1, 1, 1)
    a_ts2 = a2 / a2s
    var_ts = (1 - a2) - a_ts2 * (1 - a2s)
    ref_mean = a2s.sqrt() * var_ts / (1 - a2) * x + a_ts2.sqrt() * (1 - a2s) / (1 - a2) * z
    ref_std = (var_ts * (1 - a2s) / (1 - a2)).sqrt()
    assert torch.allclose(mean, ref_mean, atol=1e-5)  # the schedule table is float32
    assert torch.allclose(std, ref_std, rtol=1e-5)


def test_step_log_prob_and_kl_closed_forms():
    diff = _diffusion()
    torch.manual_seed(1)
    mean, other = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    std = torch.tensor([0.3, 0.7], dtype=torch.float64).view(-1, 1, 1)
    mask = torch.ones(2, 4, dtype=torch.bool)
    z = mean + std * torch.randn_like(mean)
    ref = torch.distributions.Normal(mean, std).log_prob(z).sum((1, 2))
    assert torch.allclose(diff.step_log_prob(z, mean, std, mask), ref)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std), torch.distributions.Normal(other, std))
    assert torch.allclose(diff.step_kl(mean, other, std, mask), kl.sum((1, 2)))


def test_step_kl_between_two_noise_predictions_and_its_continuous_limit():
    """KL of a reverse step between ε-models = ½(e^{Δλ} − 1)‖Δε‖²; times the factor it is ½Δλ‖Δε‖²:
    close on a step of 1/T, apart by orders of magnitude on one step from pure noise to the data."""
    diff = _diffusion()
    torch.manual_seed(2)
    z, eps, other = (torch.randn(3, 4, 2, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(3, 4, dtype=torch.bool)
    t, s = torch.tensor([100, 50, 11]), torch.tensor([0, 30, 10])
    mean, std = diff.reverse_step(z, eps, t, s)
    mean_other, _ = diff.reverse_step(z, other, t, s)
    delta_lambda = (diff.schedule.gamma(t) - diff.schedule.gamma(s)).double()
    sq = ((eps - other) ** 2).sum((1, 2))
    chain = diff.step_kl(mean, mean_other, std, mask)
    assert torch.allclose(chain, 0.5 * torch.expm1(delta_lambda) * sq, rtol=1e-4)
    continuous = chain * diff.continuous_kl_factor(t, s).double()
    assert torch.allclose(continuous, 0.5 * delta_lambda * sq, rtol=1e-4)
    assert chain[0] > 100 * continuous[0] and chain[2] < 1.2 * continuous[2]  # one step from T to 0; one of 1/T
    assert diff.continuous_kl_factor(t, None).tolist() == [1.0, 1.0, 1.0]


def test_zero_mean_space_counts_n_minus_one_dimensions():
    space = PointSetSpace(3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert space.dims(mask, 7).tolist() == [2 * 3 + 3 * 4, 1 * 3 + 2 * 4]
    x = space.noise(torch.empty(2, 4, 7), mask)
    assert is_centered(space, x, mask) and torch.all(x[0, 3] == 0) and torch.all(x[1, 2:] == 0)


@pytest.mark.parametrize("n_sampling_steps", [None, 20])
def test_sampler_with_the_optimal_denoiser_on_gaussian_data(n_sampling_steps):
    """For data N(0, s²): z_t ~ N(0, α²s² + σ²) and E[ε | z_t] = σ_t z_t / (α_t²s² + σ_t²). Every sampler
    step is then linear, z_s = c·z_t + std·ξ, so the variance of the samples follows in closed form:
    it is s² for the full chain, and smaller for big respaced steps (ancestral steps ignore Var[x | z_t])."""
    T, s = 1000, 0.5
    diff = _diffusion(T=T)

    def coeffs(t_int):
        g = diff.schedule.gamma(torch.as_tensor([t_int])).double()
        return torch.sigmoid(-g).item(), torch.sigmoid(g).item()

    def optimal(z, t, mask, cond=None):
        a2, sig2 = coeffs(round(t[0].item() * T))
        return sig2**0.5 * z / (a2 * s**2 + sig2)

    var = 1.0  # z_T ~ N(0, I)
    steps = respaced_steps(T, n_sampling_steps)
    for t_int, s_int in itertools.pairwise(steps):
        one = torch.ones(1, 1, 1, dtype=torch.float64)
        c, std = diff.reverse_step(one, optimal(one, torch.tensor([t_int / T]), None), torch.tensor([t_int]),
                                   torch.tensor([s_int]))
        var = c.item() ** 2 * var + std.item() ** 2
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    c, std = diff.final_step(one, optimal(one, torch.zeros(1), None))
    var = c.item() ** 2 * var + std.item() ** 2
    if n_sampling_steps is None:
        assert var == pytest.approx(s**2, rel=0.01)
    else:
        assert var < 0.95 * s**2

    mask = torch.ones(4000, 1, dtype=torch.bool)
    x = diff.sample(optimal, mask, 2, n_sampling_steps, generator=torch.Generator().manual_seed(0))
    assert x.var().item() == pytest.approx(var, rel=0.06)
    assert abs(x.mean().item()) < 0.03


def _toy_chain():
    """A 100-step chain on centred 5-channel sets, a fixed smooth ε-network and a mask with padding."""
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(NoiseSchedule("polynomial_2", 100), PointSetSpace(centered_dims=3))
    weight = torch.randn(5, 5) / 5

    def denoiser(z, t, mask, cond=None):
        return diffusion.space.project(torch.tanh(z @ weight) * (1 + t.view(-1, 1, 1)), mask)

    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 3] = False
    return diffusion, denoiser, mask


def test_every_sampler_walks_the_same_chain_step_for_step():
    """The ancestral sampler, CTRL's rollout, DDPO's trajectories and SMC with one particle draw the
    same states from the same generator: one transition primitive serves them all."""
    from common.ddpo import sample_trajectories
    from common.rollout import rollout
    from common.smc import Potential, smc_sample

    diffusion, denoiser, mask = _toy_chain()
    seed = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    x = diffusion.sample(denoiser, mask, 5, 10, generator=seed())
    with torch.no_grad():
        rolled = rollout(diffusion, denoiser, denoiser, mask, 5, 10, checkpoint=False, generator=seed())
    traced = sample_trajectories(diffusion, denoiser, mask, 5, 10, generator=seed())
    zero = Potential(lambda x0, t, m: torch.zeros(len(x0)), lambda x, m: torch.zeros(len(x)))
    steered = smc_sample(diffusion, denoiser, zero, mask, 5, n_particles=1, n_sampling_steps=10, generator=seed())
    for other in (rolled.x, traced.x, steered.x):
        assert torch.equal(x, other)
    assert torch.equal(rolled.prior_log_prob, rolled.log_prob) and torch.allclose(traced.log_probs.sum(0), rolled.log_prob)


def _gaussian_data_denoiser(diff, s):
    """The optimal ε-network for data N(0, s²): E[ε | z_t] = σ_t z_t / (α_t²s² + σ_t²)."""

    def optimal(z, t, mask, cond=None):
        g = diff.schedule.gamma((t * diff.n_steps).round().long()).view(-1, 1, 1)
        return torch.sigmoid(g).sqrt() * z / (torch.sigmoid(-g) * s**2 + torch.sigmoid(g))

    return optimal


def test_second_order_solver_recovers_the_data_variance_in_few_steps():
    """On Gaussian data with the optimal denoiser, 10 ancestral steps shrink the variance (each step
    ignores Var[x | z_t]: 0.154 for s² = 0.25); the second-order step on the log-SNR grid lands within 6 %
    of s² (0.264), from the other side."""
    T, s = 1000, 0.5
    diff = _diffusion(T=T)
    optimal = _gaussian_data_denoiser(diff, s)
    mask = torch.ones(20000, 1, dtype=torch.bool)

    def variance(solver):
        x = diff.sample(optimal, mask, 1, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                        solver=solver)
        return x.var().item()

    first, second = variance(SOLVERS["ancestral"]), variance(SOLVERS["dpm2"])
    assert first < 0.9 * s**2
    assert second == pytest.approx(s**2, rel=0.06)
    assert abs(second - s**2) < 0.3 * abs(first - s**2)


def test_second_order_steps_are_closed_form_gaussians_in_smc():
    """SMC with one particle and the second-order solver draws the sampler's states; with the network
    itself as proposal every p_pre/q ratio is 1 (both histories are carried), so the weights stay 0."""
    from common.smc import Potential, model_proposal, smc_sample

    diffusion, denoiser, mask = _toy_chain()
    solver = SOLVERS["dpm2"]
    x = diffusion.sample(denoiser, mask, 5, 10, generator=torch.Generator().manual_seed(7), solver=solver)
    first = diffusion.sample(denoiser, mask, 5, 10, generator=torch.Generator().manual_seed(7))
    zero = Potential(lambda x0, t, m: torch.zeros(len(x0)), lambda x, m: torch.zeros(len(x)))
    steered = smc_sample(diffusion, denoiser, zero, mask, 5, n_particles=1, n_sampling_steps=10,
                         generator=torch.Generator().manual_seed(7), solver=solver)
    assert torch.equal(x, steered.x) and not torch.allclose(x, first)
    proposed = smc_sample(diffusion, denoiser, zero, mask, 5, n_particles=4, n_sampling_steps=10,
                          proposal=model_proposal(denoiser), generator=torch.Generator().manual_seed(7), solver=solver)
    assert torch.allclose(proposed.log_weights, torch.zeros_like(proposed.log_weights), atol=1e-4)


def test_second_order_histories_follow_resampled_particles():
    """With the network as its own proposal, q = p_pre at every step only if the proposal's history is
    resampled with the particles as the prior's is: SMC then draws the very states of the prior-proposal
    run, resampling included (a potential that makes the weights uneven, resampling at every step)."""
    from common.smc import Potential, model_proposal, smc_sample

    diffusion, denoiser, mask = _toy_chain()
    pull = Potential(lambda x0, t, m: -4.0 * x0[..., 3].sum(1), lambda x, m: -4.0 * x[..., 3].sum(1))  # a free channel

    def run(proposal):
        return smc_sample(diffusion, denoiser, pull, mask, 5, n_particles=4, n_sampling_steps=10, proposal=proposal,
                          potential_from=100, ess_threshold=1.0, generator=torch.Generator().manual_seed(3),
                          solver=SOLVERS["dpm2"])

    by_prior, by_network = run(None), run(model_proposal(denoiser))
    assert by_prior.resampled.sum() >= 5 and float(by_prior.ess.min()) < 3.5  # real resampling, uneven weights
    torch.testing.assert_close(by_network.x, by_prior.x)
    torch.testing.assert_close(by_network.log_weights, by_prior.log_weights)


@pytest.mark.parametrize("every, reads", [(1, 10), (2, 5), (4, 3)])
def test_a_sparser_potential_is_read_less_and_telescopes_to_the_final_reward(every, reads):
    """Reading the potential at every m-th step where it is on (all 10 here) keeps G between reads, so the
    weights (and the ESS) move only at reads; without resampling the increments telescope, so each
    log-weight is exactly r(x)/τ."""
    from common.smc import Potential, smc_sample

    diffusion, denoiser, mask = _toy_chain()
    calls = []

    def estimate(x0, t, m):
        calls.append(t[0].item())
        return -0.1 * x0[..., 3].sum(1)

    pull = Potential(estimate, lambda x, m: -0.1 * x[..., 3].sum(1))  # gentle: the ESS moves but stays above 1
    out = smc_sample(diffusion, denoiser, pull, mask, 5, n_particles=4, n_sampling_steps=10, temperature=0.5,
                     potential_from=diffusion.n_steps, ess_threshold=0.0, generator=torch.Generator().manual_seed(3),
                     potential_every=every)
    assert len(calls) == reads and not out.resampled.any()
    moved = {i: not torch.equal(out.ess[i], out.ess[i - 1]) for i in range(1, 11)}  # 11 transitions, the first off
    assert not any(moved[i] for i in moved if (i - 1) % every) and sum(moved.values()) >= 3
    final = (-0.1 * out.x[..., 3].sum(1) / 0.5).double()
    torch.testing.assert_close(out.log_weights.gather(1, out.chosen.unsqueeze(1)).squeeze(1), final)
    with pytest.raises(ValueError, match="potential_every ≥ 1"):
        smc_sample(diffusion, denoiser, pull, mask, 5, potential_every=0)


def test_the_best_output_is_each_system_s_highest_reward_particle():
    """``pick="best"`` walks the same particles as ``"sample"`` (the choice comes after the last step) and
    returns, per system, the particle whose final reward is highest; an unknown pick is refused."""
    from common.smc import Potential, smc_sample

    diffusion, denoiser, mask = _toy_chain()

    def reward(x, m):
        return -x[..., 3].sum(1)

    pull = Potential(lambda x0, t, m: reward(x0, m), reward)

    def run(pick):
        return smc_sample(diffusion, denoiser, pull, mask, 5, n_particles=8, n_sampling_steps=10,
                          generator=torch.Generator().manual_seed(5), pick=pick)

    drawn, best = run("sample"), run("best")
    torch.testing.assert_close(best.log_weights, drawn.log_weights)  # the same systems
    assert torch.isfinite(best.log_weights).all() and (best.reward >= drawn.reward).all()
    assert (best.reward > drawn.reward).any()  # a draw by the weights is not always the best particle
    torch.testing.assert_close(best.reward, reward(best.x, mask).double())
    with pytest.raises(ValueError, match="unknown pick 'argmax' \\(expected one of sample, best\\)"):
        smc_sample(diffusion, denoiser, pull, mask, 5, pick="argmax")
