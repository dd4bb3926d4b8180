"""The EGNN denoiser and the molecule prior: symmetries, masks, centring."""
import copy

import numpy as np
import pytest
import torch

from common.runtime import cpu_compiler_present, set_precision
from molctrl import egnn
from molctrl.prior import MoleculeDiffusion, PriorConfig
from tests.geometry import is_centered, random_orthogonal


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MoleculeDiffusion(PriorConfig(setting="qm9", hidden=32, n_layers=3), np.ones(30)).double()
    for layer in m.denoiser.egnn.layers:  # make the coordinate updates non-trivial
        torch.nn.init.normal_(layer.coord[-1].weight, std=0.05)
    return m


def _inputs(model, b=3, n=7):
    g = torch.Generator().manual_seed(1)
    types = torch.randint(0, model.n_types, (b, n), generator=g)
    types[0, 5:] = -1
    pos = torch.randn(b, n, 3, generator=g, dtype=torch.float64) * 1.5
    x, mask = model.encode(types, pos)
    return x, mask, torch.rand(b, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("reflect", [False, True])
def test_eps_is_equivariant_under_rotations_and_reflections(model, reflect):
    x, mask, t = _inputs(model)
    eps = model.denoiser(x, t, mask)
    q = random_orthogonal(3, reflect)
    x_rot = torch.cat([x[..., :3] @ q.T, x[..., 3:]], -1)
    eps_rot = model.denoiser(x_rot, t, mask)
    assert torch.allclose(eps_rot[..., :3], eps[..., :3] @ q.T, atol=1e-10)
    assert torch.allclose(eps_rot[..., 3:], eps[..., 3:], atol=1e-10)
    assert eps[..., :3].abs().max() > 1e-3  # the test is not vacuous


def test_eps_is_invariant_to_translation(model):
    x, mask, t = _inputs(model)
    shifted = x.clone()
    shifted[..., :3] += torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64) * mask.unsqueeze(-1)
    assert torch.allclose(model.denoiser(shifted, t, mask), model.denoiser(x, t, mask), atol=1e-10)


def test_eps_is_permutation_equivariant(model):
    x, mask, t = _inputs(model)
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(5))
    eps = model.denoiser(x, t, mask)
    assert torch.allclose(model.denoiser(x[:, perm], t, mask[:, perm]), eps[:, perm], atol=1e-10)


def test_padding_never_affects_real_atoms(model):
    x, mask, t = _inputs(model)
    garbage = x.clone()
    garbage[0, 5:] = 1e3 * torch.randn_like(garbage[0, 5:])
    eps, eps_g = model.denoiser(x, t, mask), model.denoiser(garbage, t, mask)
    assert torch.equal(eps[0, :5], eps_g[0, :5]) and torch.all(eps_g[0, 5:] == 0)
    # a molecule's output does not depend on the others in the batch
    assert torch.allclose(model.denoiser(x[1:2], t[1:2], mask[1:2]), eps[1:2], atol=1e-10)


def test_eps_positions_have_zero_mean(model):
    x, mask, t = _inputs(model)
    assert is_centered(model.diffusion.space, model.denoiser(x, t, mask), mask, atol=1e-10)


def test_samples_are_centred_and_decoded(model):
    mols = model.sample(5, n_sampling_steps=4, generator=torch.Generator().manual_seed(0))
    assert len(mols) == 5
    for m in mols:
        assert 1 <= m.n_atoms <= 29 and set(m.symbols) <= set("HCNOF")
        assert np.abs(m.positions.mean(0)).max() < 1e-6


def test_loss_is_finite_and_trains(model):
    torch.manual_seed(0)
    m = MoleculeDiffusion(PriorConfig(setting="qm9-noh", hidden=16, n_layers=2, n_steps=50), np.ones(10))
    types = torch.randint(0, 4, (8, 6))
    pos = torch.randn(8, 6, 3)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    t = torch.randint(0, 51, (8,))
    first = m.diffusion.denoising_loss(m.denoiser, *m.encode(types, pos), t=t).mean().item()
    for _ in range(30):
        loss = m(types, pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(0)
    last = m.diffusion.denoising_loss(m.denoiser, *m.encode(types, pos), t=t).mean().item()
    assert np.isfinite(last) and last < first


def test_export_round_trip(model):
    again = MoleculeDiffusion.from_export(model.float().export()).double()
    model.double()
    x, mask, t = _inputs(model)
    assert torch.equal(again.denoiser(x, t, mask), model.denoiser(x, t, mask))
    with pytest.raises(ValueError, match="not a molctrl.prior export"):
        MoleculeDiffusion.from_export({"kind": "other"})


def test_cpu_batch_slicing_changes_nothing(model, monkeypatch):
    x, mask, t = _inputs(model)
    whole = model.denoiser(x, t, mask)
    monkeypatch.setitem(egnn.CPU_PAIR_ELEMENTS, torch.float32, 1)  # one molecule per slice
    assert torch.allclose(model.denoiser(x, t, mask), whole, atol=1e-12)


@pytest.mark.skipif(not cpu_compiler_present(), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_slices_compute_what_the_eager_network_does(monkeypatch):
    """One compiled graph (dynamic shapes) serves slices of every size and molecules of every size, in
    training (gradients too) and under no_grad, and computes what the eager network does."""
    torch.manual_seed(0)
    eager = MoleculeDiffusion(PriorConfig(setting="qm9", hidden=16, n_layers=2), np.ones(30))
    compiled = copy.deepcopy(eager)
    compiled.denoiser.egnn.compile_slices()
    monkeypatch.setitem(egnn.CPU_PAIR_ELEMENTS, torch.float32, 2 * 7 * 7 * 16)  # slices of 2 molecules, then 1
    for b, n in ((3, 7), (5, 4)):
        x, mask, t = _inputs(eager, b, n)
        x, t = x.float(), t.float()
        outputs = []
        for m in (eager, compiled):
            m.zero_grad()
            out = m.denoiser(x, t, mask)
            out.square().sum().backward()
            outputs.append((out.detach(), m.denoiser.egnn.embed.weight.grad.clone()))
            with torch.no_grad():
                outputs[-1] += (m.denoiser(x, t, mask),)
        for ours, theirs in zip(*outputs):
            torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_bfloat16_products_keep_the_output_float32_and_close():
    """Mixed precision: the matrix products in bfloat16, the residual stream, coordinates and output in
    float32, within bfloat16's rounding of the float32 network; parameters untouched."""
    torch.manual_seed(0)
    m = MoleculeDiffusion(PriorConfig(setting="qm9", hidden=32, n_layers=3), np.ones(30))
    x, mask, t = (v.float() if v.is_floating_point() else v for v in _inputs(m.double()))
    m = m.float()
    exact = m.denoiser(x, t, mask)
    set_precision(m, "bf16")
    low = m.denoiser(x, t, mask)
    assert low.dtype == torch.float32 and all(p.dtype == torch.float32 for p in m.parameters())
    error = (low - exact).norm() / exact.norm()
    assert 1e-4 < error < 0.03  # bfloat16 keeps 8 bits: changed (really lower precision), but not broken
    assert torch.all(low[~mask] == 0)
    set_precision(m, "fp32")
    assert torch.equal(m.denoiser(x, t, mask), exact)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        set_precision(m, "fp8")
    with pytest.raises(ValueError, match="Sequential has no lower-precision path"):
        set_precision(torch.nn.Sequential(torch.nn.Linear(2, 2)), "bf16")


def test_a_conditioned_copy_starts_as_the_prior_and_can_learn_the_condition(model):
    conditioned = model.with_condition(4).double()
    x, mask, t = _inputs(model)
    cond = torch.randn(x.shape[0], 4, dtype=torch.float64)
    assert torch.equal(conditioned.denoiser(x, t, mask, cond), model.denoiser(x, t, mask))
    conditioned.denoiser(x, t, mask, cond).square().sum().backward()
    assert conditioned.denoiser.cond_embed.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match=r"needs cond of shape \(3, 4\), got None"):
        conditioned.denoiser(x, t, mask)
    again = MoleculeDiffusion.from_export(conditioned.export()).double()
    assert torch.equal(again.denoiser(x, t, mask, cond), conditioned.denoiser(x, t, mask, cond))


@pytest.mark.parametrize("gate", ["time", "none"])
def test_the_time_gate_mutes_the_condition_at_the_data_and_the_open_gate_does_not(model, gate):
    conditioned = model.with_condition(4, cond_gate=gate).double()
    torch.nn.init.normal_(conditioned.denoiser.cond_embed.weight, std=0.5)
    x, mask, _ = _inputs(model)
    zero = torch.zeros(x.shape[0], dtype=torch.float64)
    eps = [conditioned.denoiser(x, zero, mask, torch.full((x.shape[0], 4), c, dtype=torch.float64)) for c in (-1.0, 1.0)]
    assert torch.equal(*eps) == (gate == "time")
    assert MoleculeDiffusion.from_export(conditioned.export()).config.cond_gate == gate
    with pytest.raises(ValueError, match="unknown condition gate 'sometimes'"):
        model.with_condition(4, cond_gate="sometimes")
