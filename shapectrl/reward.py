"""The shape reward: log-likelihood of a target class and target attributes given a cloud.

For a target y (class k and attributes a*, each masked, see :mod:`shapectrl.conditions`)

    r(x; y) = m₀·log p̂(k | x) + Σ_a m_a·log N(a*; a(x), (ρ·s_a)²),

where p̂ is a calibrated classifier (the reward classifier, never the evaluator) and a(x) the
attribute measured from the points in model units. The attribute "likelihood" is a tolerance: ρ
(``tolerance``, default 0.1) in units of the attribute's training standard deviation s_a, with Huber
tails beyond ``tail`` widths (:func:`common.rewards.gaussian_log_density`) so that a cloud far from
the target costs O(|z|), not O(z²), and CTRL's gradients stay bounded. Several
controls compose by adding these log-likelihoods, as for molecules.

Scores are split from the likelihood (:meth:`ShapeReward.scores`, :meth:`ShapeReward.log_likelihood`)
so that a pool of prior clouds is read once and any target's reward then follows in closed form.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.rewards import Reward, gaussian_log_density
from shapectrl.classifier import ShapeClassifier
from shapectrl.conditions import ShapeConditions


class ShapeReward(Reward):
    """``forward(x (B, N, 3) normalised, mask, y (B, 1 + A), y_mask) -> r (B,)``; differentiable in x
    through the classifier and the extents (the layer-based attributes have zero gradient)."""

    def __init__(self, classifier: ShapeClassifier, conditions: ShapeConditions, tolerance: float = 0.1,
                 tail: float | None = 4.0):
        super().__init__()
        missing = [c for c in conditions.classes if c not in classifier.classes]
        if missing:
            raise ValueError(f"the reward classifier does not know class {missing[0]!r} "
                             f"(it knows {', '.join(classifier.classes)})")
        if tolerance <= 0:
            raise ValueError(f"the attribute tolerance must be positive, got {tolerance}")
        self.classifier = classifier.requires_grad_(False).eval()
        self.conditions, self.tolerance, self.tail = conditions, tolerance, tail
        self.register_buffer("columns", torch.tensor([classifier.classes.index(c) for c in conditions.classes]))
        self.register_buffer("spread", tolerance * conditions.scale.clone())

    def scores(self, x: Tensor) -> Tensor:
        """``(B, N, 3)`` normalised clouds -> ``(B, K + A)``: log p̂(class | x) for the K classes, then
        the A attributes measured in model units."""
        log_probs = self.classifier.predict_log_probs(x)[:, self.columns]
        attributes = self.conditions.measure(self.classifier.normalisation.denormalise(x))
        return torch.cat([log_probs, attributes.to(log_probs.dtype)], dim=1)

    def log_likelihood(self, scores: Tensor, y: Tensor, y_mask: Tensor) -> Tensor:
        """r from scores ``(..., K + A)`` and targets ``y, y_mask (..., 1 + A)`` (broadcast) -> ``(...)``."""
        k = self.conditions.n_classes
        label = torch.where(y_mask[..., 0], y[..., 0], torch.zeros_like(y[..., 0])).long()
        onehot = torch.nn.functional.one_hot(label, k).to(scores.dtype)
        r_class = (onehot * scores[..., :k]).sum(-1) * y_mask[..., 0]
        r_attr = gaussian_log_density(y[..., 1:], scores[..., k:], self.spread, y_mask[..., 1:], self.tail)
        return r_class + r_attr

    def forward(self, x: Tensor, mask: Tensor, y: Tensor | None = None, y_mask: Tensor | None = None) -> Tensor:
        if y is None or y_mask is None:
            raise ValueError("the shape reward needs targets y and y_mask")
        return self.log_likelihood(self.scores(x), y, y_mask)
