"""Shape classifiers: p(class | points) for rewards and, by a different network, for evaluation.

Two architectures, so that the network that gives a reward is never the one that scores the result
(DESIGN.md §4): ``pointnet`` (a shared per-point MLP and a max + mean pool; cheap, the reward
classifier) and ``dgcnn`` (light EdgeConv layers on a k-nearest-neighbour graph; it sees local
geometry, the evaluator). Both are invariant to the order of the points and run on any N.

Clouds are in the normalised frame of the data set the classifier was trained on (its
:attr:`~ShapeClassifier.normalisation`, exported with it); a prior trained on the same data set
shares that frame. The likelihood is a softmax with temperature scaling (Guo et al. 2017): one
temperature fitted on a validation split by :meth:`ShapeClassifier.calibrate`.

Noise-aware option (for classifier guidance): with ``noise_schedule`` set, training noises each cloud
to a uniform step t of that schedule (z_t = α_t·x + σ_t·ε) and the network reads t through a time
embedding; :meth:`~ShapeClassifier.predict_log_probs` then takes ``t``. The temperature is fitted on
clean clouds (t = 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from common.diffusion import GaussianDiffusion
from common.exports import Exportable, typed, typed_field
from common.schedules import NoiseSchedule
from common.spaces import PointSetSpace
from shapectrl.data.families import CLASSES, class_id, local_labels
from shapectrl.data.normalisation import Normalisation
from shapectrl.networks import ContextEmbedding, EdgeConvEncoder, PointNetEncoder

CLASSIFIER_ARCHITECTURES = ("pointnet", "dgcnn")
DEFAULT_WIDTHS = {"pointnet": (64, 128, 256), "dgcnn": (64, 64, 128)}


@dataclass
class ShapeClassifierConfig:
    """Architecture (``pointnet`` or ``dgcnn``), the classes in label order, and the noise option.

    ``widths`` () takes the architecture's default; ``embed`` and ``neighbour_share`` (k/N) are
    ``dgcnn``'s. ``noise_schedule`` (None: a clean classifier) and ``noise_steps`` make it noise-aware.
    """

    arch: str = "pointnet"
    classes: tuple[str, ...] = CLASSES
    widths: tuple[int, ...] = ()
    embed: int = 256
    neighbour_share: float = 16 / 1024
    head_hidden: int = 256
    dropout: float = 0.3
    noise_schedule: str | None = None
    noise_steps: int = 1000

    def __post_init__(self) -> None:
        if self.arch not in CLASSIFIER_ARCHITECTURES:
            raise ValueError(f"unknown classifier architecture {self.arch!r} "
                             f"(expected one of {', '.join(CLASSIFIER_ARCHITECTURES)})")
        self.classes = tuple(self.classes)
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {len(self.classes)}")
        for name in self.classes:
            class_id(name)
        self.widths = tuple(self.widths) or DEFAULT_WIDTHS[self.arch]

    @property
    def noise_aware(self) -> bool:
        return self.noise_schedule is not None


class ShapeClassifier(Exportable, nn.Module):
    """Logits ``(B, K)`` of clouds ``(B, N, 3)``; ``forward(points, labels)`` is the training loss.

    Labels index :attr:`ShapeClassifierConfig.classes` (use :meth:`labels_from_dataset` to map the data
    set's global class ids).

    Args:
        config: architecture and classes. normalisation: the frame the clouds are in.
    """

    kind = "shapectrl.classifier"

    def __init__(self, config: ShapeClassifierConfig, normalisation: Normalisation | None = None):
        super().__init__()
        self.config = config
        self.normalisation = normalisation or Normalisation.identity()
        if config.arch == "pointnet":
            self.encoder = PointNetEncoder(config.widths)
        else:
            self.encoder = EdgeConvEncoder(config.widths, config.embed, config.neighbour_share)
        self.head = nn.Sequential(nn.Linear(self.encoder.out_dim, config.head_hidden), nn.LayerNorm(config.head_hidden),
                                  nn.SiLU(), nn.Dropout(config.dropout), nn.Linear(config.head_hidden, len(config.classes)))
        self.time = ContextEmbedding(config.widths[0]) if config.noise_aware else None
        self.diffusion = (GaussianDiffusion(NoiseSchedule(config.noise_schedule, config.noise_steps), PointSetSpace(0))
                          if config.noise_aware else None)
        self.temperature = 1.0

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    def labels_from_dataset(self, labels: torch.Tensor) -> torch.Tensor:
        """Global class ids (:data:`~shapectrl.data.CLASSES` order) ``(M,)`` -> this classifier's labels.

        Raises ValueError for a class the classifier does not know.
        """
        return local_labels(labels, self.classes, "the classifier's classes")

    def logits(self, points: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """``points (B, N, 3)``, diffusion time ``t = step/T (B,)`` for a noise-aware model (None: clean)
        -> raw logits ``(B, K)``."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"a shape classifier takes clouds of shape (B, N, 3), got {tuple(points.shape)}")
        ctx = None
        if self.time is not None:
            t = points.new_zeros(points.shape[0]) if t is None else t.to(points.dtype).expand(points.shape[0])
            ctx = self.time(t, None, points.shape[0])
        elif t is not None and bool((t != 0).any()):
            raise ValueError("this classifier is not noise-aware: it only scores clean clouds (t = 0)")
        return self.head(self.encoder(points, ctx))

    def forward(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy on clouds ``(B, N, 3)`` and labels ``(B,)`` (noised first if noise-aware)."""
        t = None
        if self.diffusion is not None:
            steps = torch.randint(0, self.diffusion.n_steps + 1, (points.shape[0],), device=points.device)
            points, _ = self.diffusion.add_noise(points, steps, torch.ones(points.shape[:2], dtype=torch.bool, device=points.device))
            t = steps.to(points.dtype) / self.diffusion.n_steps
        return F.cross_entropy(self.logits(points, t), labels)

    def predict_log_probs(self, points: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated log p(class | points), ``(B, N, 3) -> (B, K)`` (differentiable in the points)."""
        return F.log_softmax(self.logits(points, t) / self.temperature, dim=-1)

    @torch.no_grad()
    def predict_logits(self, points: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Raw logits of many clean clouds ``(M, N, 3)`` in batches, ``-> (M, K)`` on the CPU."""
        device = next(self.parameters()).device
        out = [self.logits(points[i : i + batch_size].to(device)).cpu() for i in range(0, len(points), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def predicts(self, points: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Whether this classifier's most likely class of each clean cloud ``(M, N, 3)`` is ``classes (M,)`` (column
        indices), ``-> (M,)`` bool on the CPU: the class check of redrawing (:func:`common.selection.redraw_refused`)."""
        return self.predict_logits(points).argmax(1) == classes.cpu()

    def predict_logits_model_units(self, points: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """:meth:`predict_logits` of clouds ``(M, N, 3)`` in model units, first put into this
        classifier's normalised frame, ``-> (M, K)`` on the CPU."""
        return self.predict_logits(self.normalisation.normalise(points), batch_size)

    @torch.no_grad()
    def calibrate(self, points: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
        """Fit the softmax temperature on held-out clean clouds ``(M, N, 3)`` with labels ``(M,)`` (this
        classifier's indices) by minimising their negative log-likelihood; sets :attr:`temperature` and
        returns accuracy, NLL before and after, and the temperature (for the training log)."""
        was_training = self.training
        self.eval()
        logits = self.predict_logits(points, batch_size).double()
        self.train(was_training)
        labels = labels.long().cpu()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.temperature = float(log_t.detach().exp().clamp(0.05, 20.0))
        return {"accuracy": round(float((logits.argmax(1) == labels).double().mean()), 5),
                "nll": round(float(F.cross_entropy(logits, labels)), 5),
                "nll_calibrated": round(float(F.cross_entropy(logits / self.temperature, labels)), 5),
                "temperature": round(self.temperature, 5)}

    # -- shipping --------------------------------------------------------------------------------

    def export(self) -> dict:
        """What a weights file holds: config, normalisation, temperature and weights."""
        return {"kind": self.kind, "config": asdict(self.config), "normalisation": self.normalisation.to_dict(),
                "temperature": self.temperature, "state_dict": self.state_dict()}

    @classmethod
    def from_metadata(cls, tree: dict) -> ShapeClassifier:
        """The untrained network a weights tree describes, with its temperature (see :mod:`common.exports`)."""
        model = cls(typed(ShapeClassifierConfig, typed_field(tree, "config"), "config"),
                    typed(Normalisation, typed_field(tree, "normalisation"), "normalisation"))
        model.temperature = typed_field(tree, "temperature", float, 1.0)
        if not model.temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {model.temperature}")
        return model



