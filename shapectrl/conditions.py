"""Shape targets — a class and measured attributes — and their encoding as a network condition.

A target is ``y (B, 1 + A)``: column 0 the class index into :attr:`ShapeConditions.classes` (stored
as a float), columns 1..A the attributes :attr:`ShapeConditions.attributes` in their own units (see
:mod:`shapectrl.data.attributes`); ``y_mask (B, 1 + A)`` says which columns are conditioned, so one
model serves "a chair", "something 1.2 units tall" and "a chair whose back is 60 % of its height".
The network reads

    c = [onehot(class)·m₀,  clip((y_a − μ_a)/s_a, ±5)·m_a,  m_a]        (B, K + 2A)

with μ_a, s_a the mean and standard deviation of attribute a over the training split.

Attributes are measured on clouds of the training size (``n_points``, 512 by default), because
extents grow slightly with the number of points and the pool, the data and the targets must agree.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from common.conditioning import CLIP, standard_scores
from common.exports import typed_field
from shapectrl.data.attributes import ATTRIBUTE_CLASS, ATTRIBUTES, measure

RARE_SCORES = 3.0  # a target this many training standard deviations from the mean is rare in the data


class RareTargetWarning(UserWarning):
    """A target attribute far from the values the model was trained on (:meth:`ShapeConditions.rare`)."""


#: The attributes a controlled model is conditioned on unless told otherwise: the three extents and
#: one class-specific attribute per class.
DEFAULT_ATTRIBUTES = ("width", "height", "depth", "chair_back_height", "table_top_height", "airplane_wing_span",
                      "car_roof_length", "lamp_shade_radius")


@dataclass
class ShapeConditions:
    """Which classes and attributes a model is conditioned on, and the attributes' statistics.

    ``mean (A,)`` and ``scale (A,)``: mean and standard deviation of each attribute on the training split.
    """

    classes: tuple[str, ...]
    attributes: tuple[str, ...]
    mean: torch.Tensor
    scale: torch.Tensor

    def __post_init__(self) -> None:
        self.classes, self.attributes = tuple(self.classes), tuple(self.attributes)
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown:
            raise ValueError(f"unknown attribute {unknown[0]!r} (expected some of {', '.join(ATTRIBUTES)})")
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32)
        self.scale = torch.as_tensor(self.scale, dtype=torch.float32).clamp(min=1e-6)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_targets(self) -> int:
        """Columns of y: the class and one per attribute."""
        return 1 + len(self.attributes)

    @property
    def cond_dim(self) -> int:
        return self.n_classes + 2 * len(self.attributes)

    @classmethod
    def fit(cls, values: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
            attributes: Sequence[str]) -> ShapeConditions:
        """Statistics of the training attributes ``values (M, A)`` (:func:`measure_attributes`) of shapes
        of class ``labels (M,)`` (indices into ``classes``); a class-specific attribute's over its class only."""
        conditions = cls(tuple(classes), tuple(attributes), torch.zeros(len(attributes)), torch.ones(len(attributes)))
        applies = conditions.applies()[labels]
        for a in range(len(attributes)):
            column = values[applies[:, a], a]
            if len(column) < 2:
                raise ValueError(f"attribute {attributes[a]!r}: fewer than 2 training shapes of its class")
            conditions.mean[a], conditions.scale[a] = column.mean(), column.std().clamp(min=1e-6)
        return conditions

    def measure(self, points: torch.Tensor) -> torch.Tensor:
        """The attributes of clouds ``(B, N, 3)`` in model units, ``-> (B, A)``."""
        return measure_attributes(points, self.attributes)

    def applies(self) -> torch.Tensor:
        """``(K, A)`` bool: whether attribute a means something for class k (generic ones: always)."""
        return torch.tensor([[ATTRIBUTE_CLASS.get(a, k) == k for a in self.attributes] for k in self.classes],
                            dtype=torch.bool).reshape(self.n_classes, len(self.attributes))

    def encode(self, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        """Targets ``y (B, 1 + A)`` with ``y_mask (B, 1 + A)`` -> condition ``(B, K + 2A)`` (see the module)."""
        if y.shape[-1] != self.n_targets or y_mask.shape != y.shape:
            raise ValueError(f"expected targets and mask of shape (B, {self.n_targets}), "
                             f"got {tuple(y.shape)} and {tuple(y_mask.shape)}")
        m = y_mask.to(torch.float32)
        label = torch.where(y_mask[:, 0], y[:, 0], torch.zeros_like(y[:, 0])).long()
        onehot = torch.nn.functional.one_hot(label, self.n_classes).float() * m[:, :1]
        values = torch.where(y_mask[:, 1:], y[:, 1:].float(), self.mean.to(y.device))
        return torch.cat([onehot, standard_scores(values, self.mean, self.scale) * m[:, 1:], m[:, 1:]], dim=1)

    def random_mask(self, labels: torch.Tensor, p_class: float, p_attribute: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Which columns to condition on for rows of class ``labels (B,)``: the class with probability
        ``p_class``, each attribute that applies to the row's class with ``p_attribute``; a row left
        empty gets its class. ``-> (B, 1 + A)`` bool."""
        b = len(labels)
        use_class = torch.rand(b, generator=generator) < p_class
        use_attr = (torch.rand(b, len(self.attributes), generator=generator) < p_attribute) & self.applies()[labels.cpu()]
        use_class |= ~use_attr.any(1)
        return torch.cat([use_class.unsqueeze(1), use_attr], dim=1)

    def target(self, class_name: str | None = None, values: Mapping[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One target from names: ``(y (1 + A,), y_mask (1 + A,))``; a clear error for an unknown name or an
        attribute value beyond the encoding's clip."""
        values = dict(values or {})
        y, mask = torch.zeros(self.n_targets), torch.zeros(self.n_targets, dtype=torch.bool)
        if class_name is not None:
            if class_name not in self.classes:
                raise ValueError(f"unknown class {class_name!r} (this model knows {', '.join(self.classes)})")
            y[0], mask[0] = self.classes.index(class_name), True
        for name, value in values.items():
            if name not in self.attributes:
                raise ValueError(f"unknown attribute {name!r} (this model knows {', '.join(self.attributes)})")
            k = 1 + self.attributes.index(name)
            lo, hi = (float(self.mean[k - 1] + sign * CLIP * self.scale[k - 1]) for sign in (-1, 1))
            if not lo <= value <= hi:  # the encoding clips there: any value beyond would ask the same
                raise ValueError(f"{name}={value:g} is outside what the model can be asked ({lo:.3g} to {hi:.3g}: "
                                 f"the training mean ± {CLIP:g} standard deviations)")
            y[k], mask[k] = float(value), True
        if not mask.any():
            raise ValueError("a target needs a class or at least one attribute")
        return y, mask

    def rare(self, values: Mapping[str, float]) -> list[str]:
        """One line for each known attribute value more than :data:`RARE_SCORES` training standard
        deviations from the training mean (but within what :meth:`target` accepts): the model saw few
        such shapes or none, so expect it to miss."""
        lines = []
        for name, value in values.items():
            if name in self.attributes:
                k = self.attributes.index(name)
                score = (value - float(self.mean[k])) / float(self.scale[k])
                if RARE_SCORES < abs(score) <= CLIP:
                    lines.append(f"{name}={value:g} is {abs(score):.1f} standard deviations from the training mean "
                                 f"{float(self.mean[k]):.3g}: the model saw few or no such shapes, expect a larger error")
        return lines

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "attributes": list(self.attributes),
                "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ShapeConditions:
        """The inverse of :meth:`to_dict`, each field checked (``ValueError`` naming the first bad one)."""
        attributes = typed_field(d, "attributes", tuple[str, ...])
        mean, scale = (typed_field(d, name, tuple[float, ...]) for name in ("mean", "scale"))
        if not len(mean) == len(scale) == len(attributes):
            raise ValueError(f"conditions: {len(attributes)} attributes but {len(mean)} means and {len(scale)} scales")
        return cls(typed_field(d, "classes", tuple[str, ...]), attributes, torch.tensor(mean), torch.tensor(scale))


def measure_attributes(points: torch.Tensor, attributes: Sequence[str], batch_size: int = 512) -> torch.Tensor:
    """Attributes of clouds ``(M, N, 3)`` in model units, in batches, ``-> (M, A)`` float32."""
    if not attributes:
        return points.new_zeros(len(points), 0)
    out = []
    for start in range(0, len(points), batch_size):
        values = measure(points[start : start + batch_size], list(attributes))
        out.append(torch.stack([values[a] for a in attributes], dim=1))
    return torch.cat(out).float()
