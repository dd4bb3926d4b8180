"""Weights files that cannot carry code: safetensors with the non-tensor data as JSON metadata.

Every file the package writes — shipped weights, a run's ``model.safetensors`` and ``checkpoint.safetensors``,
pools of scored samples — is a *tree*: nested dicts, lists and tuples whose leaves are tensors or JSON
scalars. :func:`save_tree` stores the tensors in safetensors' table and the rest of the tree in the
header's metadata, under ``tree``, as tagged JSON:

    tensor       -> {"$tensor": name}          (name: the leaf's path, e.g. "state_dict/denoiser.w")
    tuple        -> {"$tuple": [...]}
    dict whose keys are not all plain strings (an optimiser's parameter ids) -> {"$items": [[key, value], ...]}

so that a tree read back is equal to the one written, tuples, integer keys, NaN and all (a resumed
optimiser continues bit for bit). Reading a safetensors file parses a JSON header and copies tensor
bytes; nothing in it is ever executed.

Files of the older pickle format (``.pt``) are read only through ``torch.load(weights_only=True)``
with nothing added to torch's allow-list (tensor rebuilders and plain containers), so a pickle that
would import anything else — ``os.system`` say — is refused before it runs.

A weights file with a record beside it (``NAME.md`` for ``NAME.safetensors``) that states a
``SHA-256`` is checked against it at every read: shipped weights are what their record describes.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from pathlib import Path

import torch

from common.runtime import atomic_path, read_bytes

FORMAT = "molctrl-tree/1"  # metadata["format"] of the files written here
SUFFIX = ".safetensors"
_TAGS = ("$tensor", "$tuple", "$items")
_SHA_IN_RECORD = re.compile(r"SHA-256\W*([0-9a-f]{64})")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue", "You can use")


class WeightsError(ValueError):
    """A weights file that cannot be used. The message is one line that starts with the file's path."""


# -- the tree codec ------------------------------------------------------------------------------


def _join(path: str, key) -> str:
    return f"{path}/{key}" if path else str(key)


def _encode(node, path: str, tensors: dict[str, torch.Tensor], where: str):
    if isinstance(node, torch.Tensor):
        name = path or "tensor"
        while name in tensors:  # only when two paths print alike (a key 0 and a key "0")
            name += "'"
        tensors[name] = node.detach().cpu().contiguous()
        return {"$tensor": name}
    if isinstance(node, tuple):
        return {"$tuple": [_encode(v, _join(path, k), tensors, where) for k, v in enumerate(node)]}
    if isinstance(node, list):
        return [_encode(v, _join(path, k), tensors, where) for k, v in enumerate(node)]
    if isinstance(node, dict):
        child = {k: _encode(v, _join(path, k), tensors, where) for k, v in node.items()}
        if all(isinstance(k, str) and k not in _TAGS for k in node):
            return child
        return {"$items": [[_encode(k, "", {}, where), v] for k, v in zip(node, child.values())]}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"{where}: cannot store a {type(node).__name__} at {path or 'the root'} "
                    "(a weights file holds tensors, numbers, strings, lists and dicts)")


def _decode(node, tensors: dict[str, torch.Tensor], where: str):
    if isinstance(node, list):
        return [_decode(v, tensors, where) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and next(iter(node)) in _TAGS:
        tag, value = next(iter(node.items()))
        if tag == "$tensor":
            if value not in tensors:
                raise WeightsError(f"{where}: its metadata names a tensor {value!r} that the file does not hold")
            return tensors[value]
        if tag == "$tuple":
            return tuple(_decode(v, tensors, where) for v in value)
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value}
    return {k: _decode(v, tensors, where) for k, v in node.items()}


def _shared_free(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share memory with an earlier one (safetensors stores each buffer once)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        out[name] = t.clone() if key in seen and t.numel() else t
        seen.add(key)
    return out


# -- files ---------------------------------------------------------------------------------------


def save_tree(tree: dict, path: str | Path) -> None:
    """Write ``tree`` to ``path`` as safetensors, atomically (a kill leaves the old file or none)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(tree, "", tensors, str(path))
    metadata = {"format": FORMAT, "tree": json.dumps(skeleton, separators=(",", ":"))}
    with atomic_path(path) as tmp:
        save_file(_shared_free(tensors), str(tmp), metadata=metadata)


def _format(head: bytes) -> str:
    if len(head) >= 9 and head[8:9] == b"{":  # a little-endian header length, then the JSON header
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch's zip container, or a bare pickle
        return "pickle"
    return "unknown"


def file_format(path: str | Path) -> str:
    """``"safetensors"``, ``"pickle"`` (torch's zip or legacy format) or ``"unknown"``, by the first bytes."""
    with open(path, "rb") as handle:
        return _format(handle.read(9))


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(path: str | Path) -> Path:
    """The record beside a weights file: ``NAME.md`` for ``NAME.safetensors``."""
    return Path(path).with_suffix(".md")


def recorded_sha256(path: str | Path) -> str | None:
    """The SHA-256 that the record beside ``path`` states, if there is one."""
    record = record_path(path)
    if not record.is_file():
        return None
    found = _SHA_IN_RECORD.search(record.read_text(encoding="utf-8"))
    return found.group(1) if found else None


def read_tree(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The tree in a weights file (safetensors, or the older pickle format read safely).

    Raises:
        WeightsError: one line naming the file: missing, empty, not a weights file, truncated,
            a pickle that would import code, or a file whose bytes differ from its record's SHA-256.
    """
    path = Path(path)
    data = read_bytes(path, WeightsError, f"a {SUFFIX} weights file")  # read once: hashed, then parsed
    if not data:
        raise WeightsError(f"{path}: empty file (expected a {SUFFIX} weights file)")
    expected = recorded_sha256(path)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise WeightsError(f"{path}: its SHA-256 differs from the one in {record_path(path).name} "
                           "(the file was changed or damaged; reinstall it)")
    kind = _format(data[:9])
    if kind == "safetensors":
        tree = _read_safetensors(path, data, map_location)
    elif kind == "pickle":
        tree = _read_pickle(path, data, map_location)
    else:
        raise WeightsError(f"{path}: not a weights file (expected {SUFFIX}, or a torch .pt file to convert)")
    if not isinstance(tree, dict):
        raise WeightsError(f"{path}: holds a bare {type(tree).__name__}, not a model (expected a dict with "
                           "kind, config and state_dict)")
    return tree


def _read_safetensors(path: Path, data: bytes, map_location) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)  # validates the header, offsets and sizes before it copies a byte
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())})") from None
    if str(map_location) != "cpu":
        tensors = {name: t.to(map_location) for name, t in tensors.items()}
    if metadata.get("format") != FORMAT or "tree" not in metadata:  # e.g. a bare state dict of another package
        raise WeightsError(f"{path}: a safetensors file without this package's metadata "
                           f"(format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        skeleton = json.loads(metadata["tree"])
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: its metadata is not valid JSON ({err})") from None
    return _decode(skeleton, tensors, str(path))


def _reason(err: Exception) -> str:
    """The informative line of a torch.load error (its messages run over several paragraphs)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)] or lines or [type(err).__name__]
    return useful[0][:200]


def _read_pickle(path: Path, data: bytes, map_location):
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            raise WeightsError(f"{path}: refused: its pickle would import {refused.group(1)}, which can run code "
                               "(only tensors and plain data are read)") from None
        raise WeightsError(f"{path}: refused: not a pickle of tensors and plain data ({_reason(err)})") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError) as err:
        raise WeightsError(f"{path}: not a readable torch file ({_reason(err)})") from None
