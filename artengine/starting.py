"""Starting points: a new training run that begins from the networks of an earlier one
(``artengine train --init SOURCE``), as StyleGAN2-ADA's transfer learning does.

A starting point is the generator, its EMA copy and the discriminator of a trained model,
with the run config that built them. ``SOURCE`` is a run folder (its newest good
checkpoint), a checkpoint file, a file written by ``artengine export RUN OUT
--for-training``, or the name of a starting point shipped with artengine (see
:func:`shipped_starting_points`). A generator-only export cannot be one: fine-tuning the
generator against a fresh discriminator undoes it.

The new run takes the architecture, network settings and image size of its starting point
(a different ``--arch`` or ``--image-size`` is refused; ``--preset`` and ``--set`` may
change training settings, and one that changes the networks' shapes is refused naming the
first tensor that no longer fits). Its data must have the starting point's classes, in the
same order. Optimizers, step count and the EMA ramp-up start afresh. The new run's
``config.json`` records the source and the sha256 of the file it read, and its first
checkpoint (step 0) is written before the first step, so a run killed before its first
scheduled checkpoint resumes from the starting point, not from random weights.

Shipped starting points live in ``artengine/starting_points/`` (package data). The one
there, ``shapes-cgan32``, is the ``cgan`` ``quality`` recipe trained on the built-in shapes at
32 px with the shape as the label; ``artengine demo`` fine-tunes it. docs/training.md gives
the command that re-creates it and what it measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (
    CHECKPOINT_FORMAT,
    GENERATOR_FORMAT,
    INIT_FORMAT,
    load_weights,
    run_weights,
    save_weights,
)
from .errors import InputError, ModelLoadError
from .io import sha256_file

#: Where shipped starting points live: ``NAME.safetensors`` in the INIT_FORMAT.
SHIPPED_DIR = Path(__file__).with_name("starting_points")
#: The networks a starting point holds (tensor name prefixes).
NETWORKS = ("G", "G_ema", "D")


@dataclass
class StartingPoint:
    """The networks of a trained model, and where they came from."""

    source: str  # as the user gave it
    path: Path  # the file read
    tensors: dict[str, torch.Tensor]  # G.*, G_ema.*, D.*
    run_config: dict[str, Any]  # the config.json of the run that trained them
    step: int | None
    sha256: str

    def record(self) -> dict[str, Any]:
        """What a run started from this point stores under ``init`` in its config.json."""
        return {"source": self.source, "path": str(self.path), "sha256": self.sha256, "step": self.step,
                "run": self.run_config.get("name"), "architecture": self.run_config.get("architecture"),
                "data": self.run_config.get("data"), "init": self.run_config.get("init")}


def shipped_starting_points() -> dict[str, Path]:
    """Name -> file of every starting point shipped with artengine."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {path.name[: -len(".safetensors")]: path for path in sorted(SHIPPED_DIR.glob("*.safetensors"))}


def resolve_starting_point(source: str | Path) -> Path:
    """A path that exists, else a shipped starting point's file; else one clear error."""
    path = Path(source)
    if path.exists():
        return path
    shipped = shipped_starting_points()
    if str(source) in shipped:
        return shipped[str(source)]
    raise InputError(f"--init {source}: no such run folder or weights file, and no shipped starting point "
                     f"of that name (shipped: {', '.join(shipped) or 'none'})")


def load_starting_point(source: str | Path) -> StartingPoint:
    """Read a starting point (see the module docstring). Pickles are refused, as everywhere."""
    path = resolve_starting_point(source)
    if path.is_dir():
        path, tensors, record = run_weights(path)
    else:
        tensors, record = load_weights(path)
        kind = record.get("format")
        if kind == GENERATOR_FORMAT:
            raise ModelLoadError(path, "holds the generator alone; a starting point needs the discriminator "
                                       "too (write one with: artengine export RUN OUT --for-training)")
        if kind not in (CHECKPOINT_FORMAT, INIT_FORMAT):
            raise ModelLoadError(path, f"unknown weights format {kind!r}")
    networks = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in NETWORKS}
    missing = [prefix for prefix in NETWORKS if not any(k.startswith(prefix + ".") for k in networks)]
    if missing:
        raise ModelLoadError(path, f"holds no {', '.join(missing)} weights")
    return StartingPoint(source=str(source), path=path, tensors=networks, run_config=dict(record["run"]),
                         step=record.get("step"), sha256=sha256_file(path))


def export_starting_point(source: str | Path, out: str | Path) -> Path:
    """Write the networks of a run (or checkpoint) as a starting point for ``train --init``:
    G, EMA G and D with the run config; no optimizer or RNG state."""
    target = Path(out)
    if target.suffix != ".safetensors":
        raise InputError(f"{target}: exported weights must be a .safetensors file")
    start = load_starting_point(source)
    record = {"format": INIT_FORMAT, "run": start.run_config, "step": start.step,
              "exported_from": {"path": str(start.path), "sha256": start.sha256}}
    return save_weights(target, start.tensors, record)
