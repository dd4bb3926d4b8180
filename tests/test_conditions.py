"""Property targets: drawn from p(c | N) of the conditioning split, encoded with a mask."""
import numpy as np
import pytest
import torch

from molctrl.conditions import PropertyConditions
from molctrl.generate import atom_counts, target_tensors
from molctrl.predictor import PROPERTIES


@pytest.fixture()
def conditions():
    n_atoms = np.array([3, 3, 5, 5, 5])
    labels = np.arange(30.0).reshape(5, 6)
    return PropertyConditions(n_atoms, labels)


def test_targets_are_labels_of_molecules_of_the_same_size(conditions):
    y = conditions.sample(torch.tensor([3, 5] * 50), torch.Generator().manual_seed(0))
    small, large = y[0::2, 0].unique().tolist(), y[1::2, 0].unique().tolist()
    assert set(small) == {0.0, 6.0} and set(large) == {12.0, 18.0, 24.0}
    with pytest.raises(ValueError, match="no molecule with 4 atoms"):
        conditions.sample(torch.tensor([4]))


def test_encoding_normalises_conditioned_entries_and_ignores_the_rest(conditions):
    mask = conditions.mask_from_names(["alpha", "mu"], 2)
    y = torch.full((2, 6), float("nan"))
    y[:, 0], y[:, 4] = 12.0, 20.0
    c = conditions.encode(y, mask)
    assert c.shape == (2, 12) and torch.isfinite(c).all()
    assert torch.allclose(c[0, :6], torch.tensor([0.0, 0, 0, 0, (20 - 16) / 7.2, 0]))
    assert c[0, 6:].tolist() == [1.0, 0, 0, 0, 1.0, 0]
    with pytest.raises(ValueError, match="unknown properties"):
        conditions.mask_from_names(["alpha", "r3"], 1)
    assert len(PROPERTIES) * 2 == conditions.cond_dim


def test_atom_counts_follow_the_molecules_whose_labels_are_nearest_the_target():
    # α grows with the size: 5-atom molecules have α ≈ 40, 9-atom ones α ≈ 80; the other labels are noise
    rng = np.random.default_rng(0)
    n_atoms = np.repeat([5, 9], 300)
    labels = rng.normal(0, 1, (600, len(PROPERTIES)))
    labels[:, PROPERTIES.index("alpha")] = np.where(n_atoms == 5, 40.0, 80.0) + rng.normal(0, 2, 600)
    conditions = PropertyConditions(n_atoms, labels)
    y, y_mask = target_tensors({"alpha": 41.0}, 50)
    small = atom_counts(conditions, y, y_mask, k=50, generator=torch.Generator().manual_seed(0))
    assert small.shape == (50,) and set(small.tolist()) == {5}  # the 50 nearest are all 5-atom molecules
    y, y_mask = target_tensors({"alpha": 79.0}, 50)
    assert set(atom_counts(conditions, y, y_mask, k=50).tolist()) == {9}
    y, y_mask = target_tensors({}, 400)  # no target: the sizes of the split, in their proportions
    blind = atom_counts(conditions, y, y_mask, generator=torch.Generator().manual_seed(1))
    assert set(blind.tolist()) == {5, 9} and 0.4 < (blind == 5).float().mean() < 0.6
