"""Model files checked before use: the kind, every config field's type, and the state dict's keys,
shapes and kinds (floating or not) against the network the config describes.

A model class that ships as a file (an *exportable*) has

* ``kind``: a class attribute naming what the file holds (``"molctrl.prior"``, ``"shapectrl.classifier"``, ...);
* ``export() -> dict``: the tree its file holds — ``kind``, ``config``, ``state_dict`` and whatever else
  the class needs (calibration, normalisation, conditions, the training record);
* ``from_metadata(tree) -> Module`` (classmethod): the untrained network that tree describes, built from
  its typed fields (:func:`typed`, :func:`typed_field`) — a bad field raises ``ValueError`` naming it;

and gets ``from_export`` and ``load`` from :class:`Exportable`. :func:`load_module` reads a file
(:func:`common.weights.read_tree`), dispatches on ``kind``, builds the network and checks the tensors
against it before loading them, so every malformed file ends in one
:class:`~common.weights.WeightsError` line that starts with the file's path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from common.weights import WeightsError, read_tree, save_tree

REQUIRED = object()
M = typing.TypeVar("M")


def _name(hint) -> str:
    if typing.get_origin(hint) is None and isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def conform(value, hint, where: str):
    """``value`` checked against the type ``hint`` (and converted: lists to tuples, ints to floats,
    dicts to dataclasses), or ``ValueError`` naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return conform(value, option, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: expected {_name(hint)}, got {_short(value)}")
    if dataclasses.is_dataclass(hint):
        return typed(hint, value, where)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected {_name(hint)}, got {_short(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [conform(v, a, f"{where}[{k}]") for k, (v, a) in enumerate(zip(value, args))]
        else:
            item = args[0] if args else typing.Any
            items = [conform(v, item, f"{where}[{k}]") for k, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table of fields, got {_short(value)}")
        item = args[1] if args else typing.Any
        return {k: conform(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is type(None):
        ok = value is None
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ValueError(f"{where}: expected {_name(hint)}, got {_short(value)}")
    return value


def typed(cls: type, data, where: str):
    """The dataclass ``cls`` from the fields in ``data``, each checked against its annotation; a field
    ``data`` lacks takes its default (files older than the field), a field ``cls`` lacks is an error."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table of fields, got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = {f.name for f in fields}
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{prefix}unknown field {unknown[0]!r} (a {cls.__name__} has {', '.join(sorted(known))})")
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{prefix}missing field {missing[0]!r}")
    return cls(**{k: conform(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()})


def typed_field(tree: dict, key: str, hint=typing.Any, default=REQUIRED):
    """``tree[key]`` checked against ``hint``; ``default`` when absent (an error if there is none)."""
    if key not in tree:
        if default is REQUIRED:
            raise ValueError(f"missing field {key!r}")
        return default
    return conform(tree[key], hint, key)


def tensor_shape(tree: dict, key: str) -> torch.Size:
    """The shape of ``tree["state_dict"][key]`` (what a constructor needs to know before the weights load)."""
    state = typed_field(tree, "state_dict", dict)
    if not isinstance(state.get(key), torch.Tensor):
        raise ValueError(f"state_dict lacks the tensor {key!r}")
    return state[key].shape


def restore(model: nn.Module, state, assign: bool = False) -> nn.Module:
    """Load ``state`` into ``model`` after checking that it holds exactly the model's tensors, with their
    shapes, and floating-point where the model's are (a float64 export loads into a float32 network,
    as ``load_state_dict`` casts; an integer table in place of weights does not). ``ValueError`` names
    the first difference. ``assign`` makes the network take the tensors themselves rather than copies
    (for tensors just read from a file; never for a live model's, or the two would share weights)."""
    if not isinstance(state, dict):
        raise ValueError(f"state_dict: expected a table of tensors, got {_short(state)}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = (f"lacks {len(missing)} tensor(s) the config needs, e.g. {missing[0]!r}" if missing else
                f"has {len(unexpected)} tensor(s) the config does not define, e.g. {unexpected[0]!r}")
        raise ValueError(f"state_dict {what}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"state_dict[{key!r}]: expected a tensor, got {_short(got)}")
        if got.shape != want.shape or got.is_floating_point() != want.is_floating_point():
            raise ValueError(f"state_dict[{key!r}]: expected {want.dtype} {tuple(want.shape)}, "
                             f"got {got.dtype} {tuple(got.shape)}")
    if assign:
        state = {k: state[k].to(want.device, want.dtype) for k, want in expected.items()}
    model.load_state_dict(state, assign=assign)
    return model


_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
                 "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextlib.contextmanager
def _initialisation_skipped() -> Iterator[None]:
    """``torch.nn.init``'s random fills as no-ops: a network built to receive a checked state dict (every
    parameter and buffer overwritten, :func:`restore`) need not draw weights first — half its build time."""
    saved = {name: getattr(nn.init, name) for name in _INITIALISERS}
    for name in _INITIALISERS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def from_export(cls: type, tree: dict, assign: bool = False) -> nn.Module:
    """The trained ``cls`` in an in-memory export ``tree`` (checked as :func:`load_module` checks a file);
    ``assign``: see :func:`restore`."""
    if not isinstance(tree, dict) or tree.get("kind") != cls.kind:
        kind = tree.get("kind") if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(f"not a {cls.kind} export (kind={kind!r})")
    with _initialisation_skipped():
        model = cls.from_metadata(tree)
    return restore(model, typed_field(tree, "state_dict", dict), assign)


def from_tree(cls: type, tree: dict, assign: bool = False):
    """The ``cls`` in a checked ``tree``: a model class by :func:`from_export`, a dataclass of fields
    such as a pool by :func:`typed` (``ValueError`` naming the first bad field)."""
    if dataclasses.is_dataclass(cls):
        return typed(cls, {k: v for k, v in tree.items() if k != "kind"}, "")
    return from_export(cls, tree, assign)


def class_of(path: str | Path, tree: dict, classes: Sequence[type], required: bool = True) -> type | None:
    """The class in ``classes`` whose ``kind`` the tree of the file ``path`` names; ``None`` for a tree
    without a kind when none is ``required`` (a checkpoint, a pool of the older pickle format)."""
    by_kind = {cls.kind: cls for cls in classes}
    kind = tree.get("kind")
    if kind is None and not required:
        return None
    if kind not in by_kind:
        wanted = " or ".join(repr(k) for k in by_kind)
        raise WeightsError(f"{path}: a {kind!r} file, expected {wanted}" if isinstance(kind, str) else
                           f"{path}: no 'kind' field (expected {wanted})")
    return by_kind[kind]


@contextlib.contextmanager
def errors_naming(path: str | Path) -> Iterator[None]:
    """Inside, a ``ValueError`` about a file's content becomes the :class:`WeightsError` ``PATH: reason``."""
    try:
        yield
    except WeightsError:
        raise
    except ValueError as err:
        raise WeightsError(f"{path}: {err}") from None


class Exportable:
    """Mixin for a module class with ``kind``, ``export()`` and ``from_metadata(tree)``: its trained
    instance from an in-memory export (:meth:`from_export`) or from a file (:meth:`load`)."""

    kind: typing.ClassVar[str]

    @classmethod
    def from_metadata(cls, tree: dict) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_export(cls: type[M], tree: dict) -> M:
        return from_export(cls, tree)

    @classmethod
    def load(cls: type[M], path: str | Path, map_location: str | torch.device = "cpu") -> M:
        """The model in the weights file ``path`` (one-line :class:`~common.weights.WeightsError` otherwise)."""
        return load_module(path, [cls], map_location)[0]


def load_module(path: str | Path, classes: Sequence[type], map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained model in the file ``path`` — an instance of the class in ``classes`` whose ``kind``
    the file names — and the file's tree (for what a caller reads beside the weights).

    Raises:
        WeightsError: one line starting with ``path``, for any file that is not a valid model of these kinds.
    """
    tree = read_tree(path)
    cls = class_of(path, tree, classes)
    try:
        with errors_naming(path):
            model = from_export(cls, tree, assign=True)
    except WeightsError:
        raise
    except Exception as err:  # a constructor refusing a well-typed but impossible config
        raise WeightsError(f"{path}: its config does not describe a network "
                           f"({type(err).__name__}: {' '.join(str(err).split())[:160]})") from None
    return model.to(map_location), tree


def save_fields(obj, path: str | Path) -> None:
    """Write the dataclass ``obj`` (tensors and plain fields, e.g. a pool of scored samples) as a weights
    file of its class's ``kind``."""
    save_tree({"kind": obj.kind} | {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, path)


def load_fields(cls: type, path: str | Path):
    """The dataclass ``cls`` that :func:`save_fields` wrote to ``path``, every field type-checked."""
    tree = read_tree(path)
    class_of(path, tree, [cls], required=False)  # files of the older pickle format carry no kind
    with errors_naming(path):
        return from_tree(cls, tree)
