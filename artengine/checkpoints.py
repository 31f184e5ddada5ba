"""Checkpoints and weights on disk: safetensors only, written atomically, read defensively.

A checkpoint is one ``.safetensors`` file. Its tensors are the networks' state dicts and the
optimizers' tensors under prefixes (``G.``, ``G_ema.``, ``D.``, ``opt_G.``, ``opt_D.``,
``rng.``); its header carries the JSON record (step, optimizer hyper-parameters, RNG states
that are not tensors, augmentation state, the run config) and a sha256 digest of every
tensor, so damage anywhere in the file, not only a truncated tail, is detected on load.
Because the whole checkpoint is one file written with :func:`artengine.atomic_write_bytes`,
a crash leaves the previous checkpoint or the new one, never a mix.

Reading never unpickles by default. Pickle files (``torch.save`` zip or raw pickle) are
refused with a message naming the file; :func:`load_pickle` exists only behind an explicit
opt-in that is logged, and nothing falls back to it automatically. The safetensors parser
checks header length, size and offsets before allocating; its errors are reported with the
path. torch older than 2.6 is refused (CVE-2025-32434).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _save_safetensors

from .errors import ArtengineError, ModelLoadError
from .io import atomic_write_bytes
from .runs import is_run_dir

log = logging.getLogger("artengine.checkpoints")

CHECKPOINT_FORMAT = "artengine-checkpoint/1"
GENERATOR_FORMAT = "artengine-generator/1"
#: G, EMA G and D without optimizer state: a starting point for ``train --init`` (artengine.starting).
INIT_FORMAT = "artengine-init/1"
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.safetensors$")
_RECORD_KEY = "artengine"

#: torch.load could run code even with weights_only=True before 2.6 (CVE-2025-32434).
MIN_TORCH = (2, 6)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80


def check_torch_version(version: str | None = None) -> None:
    """Refuse to run on torch older than 2.6, naming the reason."""
    text = version if version is not None else torch.__version__
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_TORCH:
        raise ArtengineError(
            f"torch {text} is installed; artengine needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} "
            "because older torch.load can execute code from a crafted checkpoint even with "
            "weights_only=True (CVE-2025-32434); upgrade torch"
        )


# ----------------------------------------------------------------------------- writing


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + digest.hexdigest()


def encode_weights(tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> bytes:
    """Serialise tensors plus a JSON record (with the tensors' digest) to safetensors bytes."""
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    doc = dict(record)
    doc["digest"] = tensor_digest(plain)
    return _save_safetensors(plain, metadata={_RECORD_KEY: json.dumps(doc, sort_keys=True)})


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> Path:
    """Write a safetensors file atomically (temp file, fsync, rename)."""
    return atomic_write_bytes(path, encode_weights(tensors, record))


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives in a run directory."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:09d}.safetensors"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return what was deleted."""
    removed = []
    for _, path in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ----------------------------------------------------------------------------- reading


def is_pickle_file(path: Path) -> bool:
    """True for files written by ``torch.save`` (zip) or ``pickle`` (protocol 2+)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    # PROTO opcode then a protocol number 2..5 (what pickle and torch.save's legacy format write).
    return head.startswith(_ZIP_MAGIC) or (len(head) > 1 and head[0] == _PICKLE_PROTOCOL and 2 <= head[1] <= 5)


class PickleRefused(ModelLoadError):
    """A pickle file was offered where only safetensors are read."""


def refuse_pickle(path: Path) -> None:
    """Raise :class:`PickleRefused` for a pickle file, explaining the opt-in."""
    raise PickleRefused(
        path,
        "is a pickle checkpoint (torch.save/pickle); refused because unpickling can run "
        "arbitrary code. Use safetensors weights, or pass --allow-pickle only if you trust "
        "where this file comes from",
    )


def load_weights(path: str | Path, *, prefixes: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by :func:`save_weights`: tensors (optionally only those
    under ``prefixes``) and the JSON record. Every problem raises :class:`ModelLoadError`
    naming the file: pickles, malformed headers, truncation, a digest mismatch."""
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(file, "no such file" if not file.exists() else "not a file")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if _RECORD_KEY not in metadata:
                raise ModelLoadError(file, "safetensors file without an artengine record "
                                           "(not written by artengine)")
            record = json.loads(metadata[_RECORD_KEY])
            names = list(handle.keys())
            all_tensors = {name: handle.get_tensor(name) for name in names}
    except SafetensorError as exc:
        # Only now look for a pickle: a safetensors length prefix can start like one.
        if is_pickle_file(file):
            refuse_pickle(file)
        raise ModelLoadError(file, f"malformed safetensors file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(file, f"unreadable artengine record: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(file, f"cannot read: {exc}") from None
    expected = record.get("digest")
    if expected is None or tensor_digest(all_tensors) != expected:
        raise ModelLoadError(file, "tensor data does not match its recorded digest (damaged file)")
    if prefixes is not None:
        all_tensors = {k: v for k, v in all_tensors.items() if k.startswith(prefixes)}
    return all_tensors, record


def load_latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest checkpoint of a run that loads cleanly, falling back past damaged ones
    (each is logged). None when the run has no checkpoint; an error when none is usable."""
    candidates = list_checkpoints(run_dir)
    problems = []
    for _, path in reversed(candidates):
        try:
            tensors, record = load_weights(path)
        except ModelLoadError as exc:
            log.warning("skipping damaged checkpoint %s: %s", path, exc.reason)
            problems.append(str(exc))
            continue
        if record.get("format") != CHECKPOINT_FORMAT:
            problems.append(f"{path}: not a training checkpoint")
            continue
        return path, tensors, record
    if problems:
        raise ModelLoadError(Path(run_dir) / CHECKPOINT_DIR,
                             "no usable checkpoint: " + "; ".join(problems))
    return None


def run_weights(run_dir: str | Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The networks of a run folder: its newest good checkpoint (file, tensors, record).
    A folder that is not a run, or a run with no checkpoint yet, is a ModelLoadError."""
    if not is_run_dir(run_dir):
        raise ModelLoadError(run_dir, "folder is not a training run (no config.json)")
    found = load_latest_checkpoint(run_dir)
    if found is None:
        raise ModelLoadError(run_dir, "run has no checkpoint yet")
    return found


def load_pickle(path: str | Path) -> Any:
    """Unpickle a foreign checkpoint. Runs whatever code the file contains: call only
    after the user opted in explicitly; the opt-in is logged here."""
    log.warning("loading pickle checkpoint %s with code execution allowed (explicit opt-in)", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # a foreign file can fail in any way while unpickling
        raise ModelLoadError(path, f"could not unpickle: {type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------- state packing


def pack_module(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict (parameters and buffers) under ``prefix.``."""
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def first_misfit(prefix: str, module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The first tensor of ``module`` that the ``prefix.*`` tensors lack, hold in another
    shape, or hold in excess, in words; None when they fit."""
    have = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    want = module.state_dict()
    for name, tensor in want.items():
        if name not in have:
            return f"{prefix} tensor {name} is not in the file"
        if not isinstance(have[name], torch.Tensor):
            return f"{prefix} tensor {name} is a {type(have[name]).__name__} in the file, not a tensor"
        if tuple(have[name].shape) != tuple(tensor.shape):
            return f"{prefix} tensor {name} is {tuple(have[name].shape)} in the file, {tuple(tensor.shape)} now"
    extra = sorted(set(have) - set(want))
    return f"{prefix} tensor {extra[0]} of the file has no place now" if extra else None


def unpack_module(prefix: str, module: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                  source: str | Path) -> None:
    """Load ``prefix.*`` tensors into ``module``; a missing, extra or misshapen tensor is a
    load error naming the first one."""
    misfit = first_misfit(prefix, module, tensors)
    if misfit:
        raise ModelLoadError(source, f"{prefix} weights do not fit the architecture: {misfit}")
    state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(source, f"{prefix} weights do not fit the architecture: "
                                     + " ".join(str(exc).split())[:400]) from None


def pack_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's tensors (under ``prefix.``) and its JSON-able remainder."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def unpack_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                     record: Mapping[str, Any], source: str | Path) -> None:
    """Restore an optimizer from :func:`pack_optimizer`'s output."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in record.get("plain_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(source, f"{prefix} optimizer state does not fit: {exc}") from None
