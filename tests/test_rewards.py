"""The reward interface (Gaussian log-likelihood, weighted sums) and the RDKit chemistry rewards."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from rdkit import Chem, RDConfig
from rdkit.Chem import QED, Crippen
from scipy.stats import norm
from torch import nn

from common.rewards import GaussianLogLikelihood, Reward, WeightedSum
from molctrl.bonds import bond_order_matrix
from molctrl.chemistry import INVALID_VALUES, ChemistryReward, chemistry_scores
from molctrl.data.qm9 import load_split
from molctrl.metrics import largest_fragment_smiles
from molctrl.molecule import Molecule
from molctrl.prior import MoleculeDiffusion, PriorConfig

# -- reward interface ----------------------------------------------------------------------------


class SumLinear(nn.Module):
    """Toy regressor: f(x) = tanh(Σ_n m_n x_n) W + b, ``(B, N, C) -> (B, P)``."""

    def __init__(self, n_channels: int, n_outputs: int):
        super().__init__()
        self.linear = nn.Linear(n_channels, n_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.tanh((x * mask.unsqueeze(-1)).sum(1)))


class Constant(Reward):
    """A non-differentiable reward giving every sample ``value``."""

    differentiable = False

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor | None = None,
                y_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full(x.shape[:1], self.value, dtype=x.dtype)


B, N, C, P = 5, 4, 6, 3


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, C, generator=gen)
    mask = torch.arange(N).unsqueeze(0) < torch.tensor([4, 3, 2, 4, 1]).unsqueeze(1)
    y = 2 * torch.randn(B, P, generator=gen)
    torch.manual_seed(0)
    return x, mask, y, SumLinear(C, P)


def _scipy_loglik(y: torch.Tensor, mean: torch.Tensor, scale, keep: np.ndarray | None = None) -> np.ndarray:
    terms = norm.logpdf(y.numpy(), loc=mean.detach().numpy(), scale=np.asarray(scale))
    return (terms if keep is None else terms * keep).sum(-1)


def test_gaussian_log_likelihood_matches_scipy(batch):
    x, mask, y, regressor = batch
    scale = [0.5, 2.0, 1.3]
    reward = GaussianLogLikelihood(regressor, scale)
    r = reward(x, mask, y)
    assert r.shape == (B,) and reward.differentiable
    np.testing.assert_allclose(r.detach().numpy(), _scipy_loglik(y, regressor(x, mask), scale), rtol=1e-5)


def test_y_mask_drops_columns_even_with_nan_targets(batch):
    x, mask, y, regressor = batch
    keep = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 1, 0]], dtype=bool)
    y = torch.where(torch.from_numpy(keep), y, torch.tensor(float("nan")))
    x = x.requires_grad_()
    r = GaussianLogLikelihood(regressor, [0.5, 2.0, 1.3])(x, mask, y, torch.from_numpy(keep))
    expected = _scipy_loglik(torch.nan_to_num(y), regressor(x, mask), [0.5, 2.0, 1.3], keep)
    np.testing.assert_allclose(r.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert r[1] == 0
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() == 0


def test_columns_pick_and_order_regressor_outputs(batch):
    x, mask, y, regressor = batch
    reward = GaussianLogLikelihood(regressor, [0.7, 1.5], columns=[2, 0])
    r = reward(x, mask, y[:, :2])
    expected = _scipy_loglik(y[:, :2], regressor(x, mask)[:, [2, 0]], [0.7, 1.5])
    np.testing.assert_allclose(r.detach().numpy(), expected, rtol=1e-5)


def test_huber_tails_are_gaussian_inside_and_linear_outside():
    from common.rewards import gaussian_log_density

    mean = torch.tensor([[0.0], [0.0], [0.0]], requires_grad=True)
    y, scale, keep = torch.tensor([[1.0], [3.0], [100.0]]), torch.tensor([2.0]), torch.ones(3, 1, dtype=torch.bool)
    plain, huber = gaussian_log_density(y, mean, scale, keep), gaussian_log_density(y, mean, scale, keep, tail=1.0)
    assert torch.allclose(huber[:1], plain[:1])  # |z| = 0.5 ≤ 1: unchanged
    const = -np.log(2.0) - 0.5 * np.log(2 * np.pi)
    assert huber[1].item() == pytest.approx(-(1.5 - 0.5) + const) and huber[2].item() == pytest.approx(-(50 - 0.5) + const)
    (grad,) = torch.autograd.grad(huber.sum(), mean)
    assert torch.allclose(grad.abs()[1:], torch.tensor([[0.5], [0.5]]))  # bounded by c/s


def test_gaussian_log_likelihood_gradient_gradcheck(batch):
    x, mask, y, regressor = batch
    reward = GaussianLogLikelihood(regressor.double(), [0.5, 2.0, 1.3], columns=[0, 1, 2]).double()
    keep = torch.rand(B, P, generator=torch.Generator().manual_seed(1)) > 0.3
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: reward(x, mask, y.double(), keep), (x,))


def test_gaussian_log_likelihood_errors(batch):
    x, mask, y, regressor = batch
    reward = GaussianLogLikelihood(regressor, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="needs targets"):
        reward(x, mask)
    with pytest.raises(ValueError, match="2 columns, the reward uses 3"):
        reward(x, mask, y[:, :2])
    with pytest.raises(ValueError, match="regressor gives 3 outputs"):
        GaussianLogLikelihood(regressor, [1.0, 1.0])(x, mask, y[:, :2])
    with pytest.raises(ValueError, match="2 columns but 1 scales"):
        GaussianLogLikelihood(regressor, [1.0], columns=[0, 1])
    with pytest.raises(ValueError, match="positive"):
        GaussianLogLikelihood(regressor, [1.0, 0.0, 1.0])


def test_weighted_sum(batch):
    x, mask, y, regressor = batch
    a = GaussianLogLikelihood(regressor, [0.5, 2.0, 1.3])
    b = GaussianLogLikelihood(regressor, [1.0, 0.4, 2.0], columns=[2, 1, 0])
    keep = torch.tensor([[True, False, True]]).expand(B, P)
    total = WeightedSum([(0.3, a), (-2.0, b)])
    torch.testing.assert_close(total(x, mask, y, keep), 0.3 * a(x, mask, y, keep) - 2.0 * b(x, mask, y, keep))
    assert total.differentiable
    mixed = WeightedSum([(1.0, a), (0.5, Constant(4.0))])
    torch.testing.assert_close(mixed(x, mask, y), a(x, mask, y) + 2.0)
    assert not mixed.differentiable
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum([])


# -- chemistry rewards ---------------------------------------------------------------------------


def _reference_sascorer():
    """RDKit's Contrib SA scorer, imported the documented way (independently of molctrl.chemistry)."""
    sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
    try:
        import sascorer
    finally:
        sys.path.pop()
    return sascorer


def kekule_benzene(short: float = 1.34, long: float = 1.46) -> Molecule:
    """Six carbons, an equiangular hexagon with alternating C=C / C-C lengths in Å.

    EDM's distance rules give a regular 1.39 Å ring all single bonds (cyclohexane, checked below), so
    benzene must be drawn as a Kekulé structure.
    """
    angles = np.deg2rad(60 * np.arange(6))
    steps = np.array([short, long] * 3)[:, None] * np.stack([np.cos(angles), np.sin(angles), 0 * angles], 1)
    positions = np.cumsum(steps, 0)
    return Molecule(["C"] * 6, positions - positions.mean(0), "benzene")


def regular_ring(radius: float = 1.39) -> Molecule:
    angles = np.deg2rad(60 * np.arange(6))
    return Molecule(["C"] * 6, radius * np.stack([np.cos(angles), np.sin(angles), 0 * angles], 1))


def pentavalent_carbon() -> Molecule:
    """A carbon with five carbon neighbours at 1.5 Å (single bonds), fails sanitisation."""
    directions = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=float)
    return Molecule(["C"] * 6, np.vstack([np.zeros(3), 1.5 * directions]))


INVALID = {
    "pentavalent": pentavalent_carbon(),
    "empty": Molecule([], np.zeros((0, 3))),
    "nan": Molecule(["C", "O"], np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]])),
}


def _smiles(molecule: Molecule) -> str | None:
    return largest_fragment_smiles(molecule.symbols, bond_order_matrix(molecule.symbols, molecule.positions))


@pytest.fixture(scope="module")
def qm9_head() -> tuple[list[Molecule], list[str]]:
    split = load_split("qm9-noh", "valid").subset(slice(0, 50))
    return split.molecules(), [str(s) for s in split.smiles]


def test_chemistry_scores_are_those_of_the_rebuilt_qm9_molecules(qm9_head):
    molecules, dataset_smiles = qm9_head
    ours = [_smiles(m) for m in molecules]
    canonical = [Chem.MolToSmiles(Chem.MolFromSmiles(s), isomericSmiles=False) for s in dataset_smiles]
    assert np.mean([a == b for a, b in zip(ours, canonical)]) >= 0.9  # the 3D round trip is right

    scores = chemistry_scores(molecules)
    valid = np.array([s is not None for s in ours])
    assert valid.sum() >= 45
    for name in ("qed", "logp", "sa"):
        assert scores[name].shape == (50,) and np.array_equal(np.isnan(scores[name]), ~valid)
    reference = [Chem.MolFromSmiles(s) for s in ours if s is not None]
    sascorer = _reference_sascorer()
    np.testing.assert_allclose(scores["qed"][valid], [QED.qed(m) for m in reference], rtol=1e-12)
    np.testing.assert_allclose(scores["logp"][valid], [Crippen.MolLogP(m) for m in reference], rtol=1e-12)
    np.testing.assert_allclose(scores["sa"][valid], [sascorer.calculateScore(m) for m in reference], rtol=1e-12)


def test_benzene_built_in_3d():
    assert _smiles(regular_ring()) == "C1CCCCC1"
    benzene = kekule_benzene()
    assert _smiles(benzene) == "c1ccccc1"
    scores = chemistry_scores([benzene])
    assert abs(scores["qed"][0] - QED.qed(Chem.MolFromSmiles("c1ccccc1"))) < 1e-6
    assert abs(scores["logp"][0] - Crippen.MolLogP(Chem.MolFromSmiles("c1ccccc1"))) < 1e-9


def test_invalid_molecules_score_nan():
    scores = chemistry_scores(list(INVALID.values()))
    assert set(scores) == {"qed", "logp", "sa"}
    for values in scores.values():
        assert np.isnan(values).all()


def _state(molecules: list[Molecule], n_max: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``[positions, one_hot(types) * 0.25]`` of qm9-noh molecules (types C N O F), and the mask."""
    decoder = ("C", "N", "O", "F")
    x = torch.zeros(len(molecules), n_max, 3 + len(decoder), dtype=dtype)
    mask = torch.zeros(len(molecules), n_max, dtype=torch.bool)
    for k, m in enumerate(molecules):
        x[k, : m.n_atoms, :3] = torch.as_tensor(m.positions)
        x[k, torch.arange(m.n_atoms), 3 + torch.tensor([decoder.index(s) for s in m.symbols], dtype=torch.long)] = 0.25
        mask[k, : m.n_atoms] = True
    return x, mask


@pytest.fixture(scope="module")
def tiny_prior() -> MoleculeDiffusion:
    return MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1), np.ones(10))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chemistry_reward_on_a_batch_state(tiny_prior, dtype):
    batch = [kekule_benzene(), *INVALID.values()]
    x, mask = _state(batch, 6, dtype)
    benzene = chemistry_scores([kekule_benzene()])
    for name, sign in (("qed", 1.0), ("logp", 1.0), ("sa", -1.0)):
        reward = ChemistryReward(name, tiny_prior.decode)
        r = reward(x, mask)
        assert r.shape == (4,) and r.dtype == dtype and not r.requires_grad and not reward.differentiable
        expected = torch.tensor([sign * benzene[name][0]] + [INVALID_VALUES[name]] * 3, dtype=dtype)
        torch.testing.assert_close(r, expected)
        torch.testing.assert_close(reward(x, mask, torch.randn(4, 2), None), r)  # targets are ignored
    assert INVALID_VALUES == {"qed": 0.0, "logp": -10.0, "sa": -10.0}
    custom = ChemistryReward("logp", tiny_prior.decode, invalid_value=-3.0)(x, mask)
    torch.testing.assert_close(custom[1:], torch.full((3,), -3.0, dtype=dtype))


def test_chemistry_reward_rejects_unknown_names(tiny_prior):
    with pytest.raises(ValueError, match="'tpsa'.*qed, logp, sa"):
        ChemistryReward("tpsa", tiny_prior.decode)
    with pytest.raises(ValueError, match="qed, logp, sa"):
        chemistry_scores([kekule_benzene()], ["qed", "mw"])


def test_target_columns_read_a_wider_target_vector(batch):
    x, mask, y, regressor = batch
    wide = torch.cat([torch.full_like(y[:, :1], float("nan")), y], -1)
    narrow = GaussianLogLikelihood(regressor, [1.0, 0.4, 2.0])
    placed = GaussianLogLikelihood(regressor, [1.0, 0.4, 2.0], target_columns=[1, 2, 3])
    assert torch.allclose(placed(x, mask, wide), narrow(x, mask, y))


def test_denoised_log_likelihood_widens_the_scale_by_the_gradient_of_a_linear_regressor():
    """f(x) = Σ a·x is linear, so f(x) ~ N(f(x̂₀), v‖a‖²) exactly: the likelihood is N(y; f(x̂₀), s² + v‖a‖²)."""

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [1.0, 1.0]]])  # (1, N, C)

        def forward(self, x, mask):
            return torch.stack([(x * self.a).sum((1, 2)), (x * 2 * self.a).sum((1, 2))], -1)

    reward = GaussianLogLikelihood(Linear(), [0.3, 0.7])
    x0 = torch.randn(4, 3, 2, requires_grad=True)
    mask = torch.ones(4, 3, dtype=torch.bool)
    y, variance = torch.randn(4, 2), torch.tensor([0.0, 0.1, 1.0, 5.0])
    got = reward.denoised_log_likelihood(x0, mask, y, None, variance)
    norm2 = reward.regressor.a.square().sum() * torch.tensor([1.0, 4.0])  # ‖∇f_k‖²
    scale = (torch.tensor([0.3, 0.7]) ** 2 + variance[:, None] * norm2).sqrt()
    expected = torch.distributions.Normal(reward.predict(x0, mask), scale).log_prob(y).sum(-1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got[0], reward(x0, mask, y)[0])  # v = 0: the reward itself
    mask_one = torch.tensor([[True, False]]).expand(4, -1)  # one conditioned column: one backward pass
    one = reward.denoised_log_likelihood(x0, mask, y, mask_one, variance)
    assert torch.allclose(one, torch.distributions.Normal(reward.predict(x0, mask)[:, 0], scale[:, 0]).log_prob(y[:, 0]),
                          atol=1e-5)
