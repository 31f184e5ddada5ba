"""The trainer: one GAN training loop for every architecture plugin.

Reads top to bottom: options -> run config (new or resumed) -> training data in memory ->
networks and optimizers (fresh, or from the newest good checkpoint) -> the loop (D steps,
G step, EMA) -> samples, metrics, checkpoints.

What the loop owns, so architectures do not have to: the non-saturating and hinge losses,
the auxiliary classifier (AC-GAN) loss of conditional models, lazy R1 on real images,
DiffAugment on everything the discriminator sees, the EMA generator (StyleGAN2-ADA's
half-life in images, with ramp-up), style/label conditioning,
data-parallel training over ``torch.distributed`` (started by ``torchrun``; gloo on CPU,
nccl on CUDA), and exact resumption.

Exact resumption: the data order is a pure function of ``(seed, step)`` (a seeded
permutation per epoch), every random draw comes from the torch generator, whose state is
checkpointed with Python's and NumPy's, and the checkpoint holds every parameter, buffer
and optimizer tensor. On CPU, ``N`` steps, a kill and ``N`` resumed steps give bitwise the
parameters and optimizer state of ``2N`` uninterrupted steps (tested).

Multi-process: every process draws the random numbers of the *global* batch and keeps its
slice, so all processes hold identical RNG states; gradients are averaged with one
all-reduce per network and step (as StyleGAN2-ADA does, rather than wrapping the networks
in DistributedDataParallel, because a GAN step runs the discriminator twice per backward
and R1 needs a double backward); batch-norm statistics are taken from rank 0. Rank 0
alone writes files.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .architecture import TRAINER_DEFAULTS, Architecture, cpu_layout
from .augment import diff_augment, parse_policy
from .checkpoints import (
    CHECKPOINT_FORMAT,
    check_torch_version,
    checkpoint_path,
    list_checkpoints,
    load_latest_checkpoint,
    pack_module,
    pack_optimizer,
    prune_checkpoints,
    save_weights,
    unpack_module,
    unpack_optimizer,
)
from .data import factor_sizes, open_dataset
from .errors import ArtengineError, InputError, ModelLoadError, check_seed
from .hookspecs import HOOK_API_VERSION
from .io import atomic_save_image, atomic_write_json, available_memory, iter_image_files, sha256_file
from .journal import LOCK_FILE, JobLock
from .plugins import Plugins, get_plugins
from .runs import (
    RUN_CONFIG,
    RUN_FORMAT,
    SAMPLES,
    TRAINING_DATA,
    MetricsLog,
    is_run_dir,
    read_run_config,
    truncate_metrics,
    write_loss_curve,
)
from .starting import StartingPoint, load_starting_point

log = logging.getLogger("artengine.training")

#: Options a resumed run must keep (they define the run); steps, device and logging may change.
_DEFINING = ("arch", "data", "image_size", "batch_size", "seed", "preset", "data_length", "label_attribute")
#: How often a run logs, samples and checkpoints, and how many checkpoints it keeps. Stored
#: in the run's config.json: a resumed run keeps its own schedule unless told otherwise (a
#: run started with ``--keep-checkpoints 20`` must not lose 17 of them on ``--resume``).
SCHEDULE_DEFAULTS = {"sample_every": 500, "checkpoint_every": 1000, "keep_checkpoints": 3, "log_every": 50}


@dataclass
class TrainOptions:
    """What ``artengine train`` asks for. ``None`` means "not given": the preset, the
    architecture's defaults, or on ``resume`` the stored run config decide."""

    out: Path
    arch: str | None = None
    data: str | None = None
    steps: int = 5000
    image_size: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    resume: bool = False
    device: str = "auto"
    preset: str | None = None
    #: Hyper-parameter overrides: any key of TRAINER_DEFAULTS or of the architecture's defaults.
    settings: dict[str, Any] = field(default_factory=dict)
    data_length: int | None = None  # procedural datasets: how many samples
    label_attribute: str | None = None  # procedural datasets: which attribute is the label
    #: The schedule (see :data:`SCHEDULE_DEFAULTS`); ``None``: the run's own on resume, else the default.
    sample_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int | None = None
    log_every: int | None = None
    max_seconds: float | None = None  # stop (with a checkpoint) after this much training time
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    progress: bool = True
    #: A new run's starting point (artengine.starting): a run folder, a checkpoint or
    #: starting-point file, or a shipped name. Its architecture, settings and image size
    #: become the new run's defaults; ``data`` defaults to its data.
    init: str | None = None


@dataclass
class TrainResult:
    """Where a training call ended."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    metrics: dict[str, Any]
    interrupted: bool = False


class TrainingInterrupted(ArtengineError):
    """Training stopped on a signal after writing a checkpoint (exit code 130)."""

    exit_code = 130


# ----------------------------------------------------------------------------- run config


def resolve_settings(arch: Architecture, preset: str | None, overrides: Mapping[str, Any],
                     base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trainer defaults <- architecture defaults <- ``base`` (a starting point's settings)
    <- preset <- user overrides, checked."""
    merged: dict[str, Any] = {**TRAINER_DEFAULTS, **arch.defaults}
    if base is not None:
        merged.update({key: value for key, value in base.items() if key in merged})
    if preset is not None:
        if preset not in arch.presets:
            known = ", ".join(sorted(arch.presets)) or "none"
            raise InputError(f"--preset {preset}: architecture {arch.name} has no such preset (known: {known})")
        merged.update(arch.presets[preset])
    for key, value in overrides.items():
        if key not in merged:
            raise InputError(f"--set {key}: unknown setting for {arch.name} (known: {', '.join(sorted(merged))})")
        merged[key] = _coerce(key, value, merged[key])
    if merged["loss"] not in ("ns", "hinge"):
        raise InputError(f"--loss {merged['loss']}: must be ns or hinge")
    _check_ranges(merged)
    try:
        parse_policy(str(merged["augment"]))
    except ValueError as exc:
        raise InputError(f"--augment: {exc}") from None
    return merged


#: The trainer's numeric settings and what each must be: (lowest, highest, lowest excluded).
_RANGES: dict[str, tuple[float, float, bool]] = {
    "z_dim": (1, math.inf, False), "batch_size": (1, math.inf, False), "d_steps": (1, math.inf, False),
    "r1_every": (1, math.inf, False), "lr_g": (0, math.inf, True), "lr_d": (0, math.inf, True),
    "r1_gamma": (0, math.inf, False), "ema_kimg": (0, math.inf, False), "ema_rampup": (0, math.inf, False),
    "style_ref_prob": (0, 1, False), "style_align": (0, math.inf, False), "aux_weight": (0, math.inf, False),
}


def _check_ranges(settings: Mapping[str, Any]) -> None:
    """A learning rate of -1 or a batch of 0 as one line naming the setting, not an
    error from deep inside torch once the data is loaded."""
    for key, (low, high, open_low) in _RANGES.items():
        value = settings.get(key)
        if value is None:
            continue
        if not (math.isfinite(value) and (value > low if open_low else value >= low) and value <= high):
            bound = f"above {low:g}" if open_low else f"at least {low:g}"
            raise InputError(f"setting {key} = {value!r}: must be {bound}" + (f" and at most {high:g}"
                                                                              if high != math.inf else ""))
    betas = settings.get("betas")
    if betas is not None and not (len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1
                                                          for b in betas)):
        raise InputError(f"setting betas = {betas!r}: must be two numbers from 0 up to (not including) 1")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Give a user value the type of the default it replaces (CLI values arrive as text)."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"--set {key}={value}: not a valid value (expected like {default!r})") from None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise InputError(f"--set {key}: expected true or false, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not type(default) and not (isinstance(default, list) and isinstance(value, list)):
        raise InputError(f"--set {key}: expected {type(default).__name__}, got {value!r}")
    return value


def _engine_versions(plugins: Plugins) -> dict[str, Any]:
    from . import __version__

    return {"artengine": __version__, "torch": torch.__version__, "hook_api": HOOK_API_VERSION,
            "plugins": plugins.versions()}


def new_run_config(options: TrainOptions, arch: Architecture, classes: list[str], data_record: Mapping[str, Any],
                   plugins: Plugins, start: StartingPoint | None = None) -> dict[str, Any]:
    """The ``config.json`` of a new run (from scratch, or from a starting point)."""
    settings = resolve_settings(arch, options.preset, options.settings,
                                base=start.run_config["config"] if start is not None else None)
    image_size = options.image_size or 32  # a starting point's, when one is given (_defaults_from_start)
    if image_size not in arch.image_sizes:
        raise InputError(f"--image-size {image_size}: {arch.name} supports "
                         + ", ".join(str(s) for s in arch.image_sizes))
    if options.batch_size is not None:
        settings["batch_size"] = options.batch_size
    if arch.conditioning != "none" and not classes:
        raise InputError(f"--arch {arch.name} is conditioned on labels, but --data {options.data} has no "
                         "classes (use class subfolders, or a labelled dataset)")
    config = {**settings, "arch": arch.name, "image_size": image_size,
              "num_classes": len(classes) if arch.conditioning != "none" else 0}
    factors = factor_sizes(classes) if arch.conditioning != "none" else None
    if factors:  # joint labels (shape+colour): an architecture may treat each part on its own
        config["label_factors"] = factors
    owner = plugins.owner("architectures", arch.name)
    if start is not None:
        _check_starting_labels(start, arch, classes)
    return {
        "format": RUN_FORMAT,
        "name": options.out.name,
        "architecture": arch.name,
        "architecture_plugin": owner.name if owner else None,
        "conditioning": arch.conditioning,
        "config": config,
        "image_size": image_size,
        "z_dim": int(config["z_dim"]),
        "class_names": list(classes) if arch.conditioning == "label" else [],
        "style_names": list(classes) if arch.conditioning == "style" else [],
        "labels": list(classes),
        "data": {k: data_record[k] for k in ("spec", "dataset", "seed", "length", "label_attribute")},
        "seed": options.seed or 0,
        "preset": options.preset,
        "options": {"data_length": options.data_length, "label_attribute": options.label_attribute},
        "engine": _engine_versions(plugins),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **({"init": start.record()} if start is not None else {}),
    }


def _check_starting_labels(start: StartingPoint, arch: Architecture, classes: list[str]) -> None:
    """A new run from a starting point must have its labels, in its order."""
    base = start.run_config
    if arch.conditioning != "none" and list(base.get("labels", [])) != list(classes):
        raise InputError(f"--init {start.source}: was trained on the labels {', '.join(base.get('labels', []))}; "
                         f"the data has {', '.join(classes)} (the same labels in the same order are needed)")


def _resolve_schedule(options: TrainOptions, stored: Mapping[str, Any]) -> dict[str, int]:
    """Defaults <- the run's stored schedule (on resume) <- the options given, checked."""
    schedule = {**SCHEDULE_DEFAULTS, **{k: v for k, v in stored.items() if k in SCHEDULE_DEFAULTS}}
    for key in SCHEDULE_DEFAULTS:
        given = getattr(options, key)
        if given is not None:
            schedule[key] = given
        if not isinstance(schedule[key], int) or isinstance(schedule[key], bool) or schedule[key] < 1:
            raise InputError(f"--{key.replace('_', '-')} {schedule[key]!r}: must be a whole number >= 1")
    return schedule


def _check_resume_options(options: TrainOptions, stored: Mapping[str, Any]) -> None:
    """A resumed run keeps its defining options; a conflicting one is named."""
    have = {
        "arch": stored["architecture"],
        "data": stored["data"]["spec"],
        "image_size": stored["image_size"],
        "batch_size": stored["config"]["batch_size"],
        "seed": stored["seed"],
        "preset": stored.get("preset"),
        "data_length": stored.get("options", {}).get("data_length"),
        "label_attribute": stored.get("options", {}).get("label_attribute"),
    }
    for key in _DEFINING:
        given = getattr(options, key)
        if given is not None and given != have[key]:
            raise InputError(f"{options.out}: run was trained with --{key.replace('_', '-')} {have[key]}, "
                             f"not {given}; drop the option or use a new --out folder")
    stored_init = stored.get("init", {}).get("source")
    if options.init is not None and options.init != stored_init:
        raise InputError(f"{options.out}: run was started from --init {stored_init}, not {options.init}; "
                         "drop the option or use a new --out folder" if stored_init else
                         f"{options.out}: run was not started from a starting point; drop --init or use a "
                         "new --out folder")
    for key, value in options.settings.items():
        stored_value = stored["config"].get(key)
        if key not in stored["config"] or _coerce(key, value, stored_value) != stored_value:
            raise InputError(f"{options.out}: run was trained with {key}={stored_value!r}; "
                             "settings cannot change on resume")


# ----------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The training images in memory, their labels, and the record of what they are."""

    pixels: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64; -1 when unlabelled
    classes: list[str]
    record: dict[str, Any]


def load_training_data(spec: str, *, image_size: int, seed: int, plugins: Plugins,
                       length: int | None = None, label_attribute: str | None = None,
                       progress: bool = True) -> TrainingData:
    """Open the dataset and hold every image in memory as uint8, with the record of exactly
    which images these are (for folders: every file with its sha256 and label)."""
    datasets = plugins.components("datasets")
    options: dict[str, Any] = {}
    if length is not None:
        options["length"] = length
    if label_attribute is not None:
        options["label_attribute"] = label_attribute
    imageset = open_dataset(spec, image_size=image_size, seed=seed, datasets=datasets, **options)
    count = len(imageset)
    if count == 0:
        raise InputError(f"--data {spec}: the dataset is empty")
    pixels = torch.empty((count, 3, image_size, image_size), dtype=torch.uint8)
    labels = torch.full((count,), -1, dtype=torch.int64)
    attribute_counts: dict[str, dict[str, int]] = {}
    sources: list[str] = []
    for i in tqdm(range(count), desc=f"loading {spec}", unit="img", disable=None if progress else True, leave=False):
        sample = imageset[i]
        pixels[i] = torch.from_numpy(np.asarray(sample.image, dtype=np.uint8).transpose(2, 0, 1).copy())
        if sample.label is not None:
            labels[i] = int(sample.label)
        for name, value in sample.attributes.items():
            bucket = attribute_counts.setdefault(name, {})
            bucket[value] = bucket.get(value, 0) + 1
        sources.append(sample.source)
    classes = list(imageset.classes)
    dataset_name = spec if spec in datasets else next(
        (d.name for d in datasets.values() if d.handles_paths), "folder")
    record: dict[str, Any] = {
        "spec": spec,
        "dataset": dataset_name,
        "seed": seed,
        "length": count,
        "label_attribute": label_attribute or (getattr(imageset, "label_attribute", None)),
        "image_size": image_size,
        "classes": classes,
        "attributes": {k: list(v) for k, v in imageset.attributes.items()},
        "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "attribute_counts": attribute_counts,
    }
    if spec not in datasets:
        root = Path(spec)
        record["root"] = str(root.resolve())
        record["files"] = [
            {"path": str(Path(src).resolve().relative_to(root.resolve())) if Path(src).is_absolute() or Path(src).exists() else src,
             "sha256": sha256_file(src), "label": classes[int(lab)] if lab >= 0 else None}
            for src, lab in zip(sources, labels.tolist())
        ]
        skipped = getattr(imageset, "skipped", [])
        record["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
        record["unlisted_files"] = _count_unlisted(root, len(record["files"]), len(skipped))
    else:
        record["sources"] = f"{dataset_name}: samples 0..{count - 1} of seed {seed} at {image_size}px"
    return TrainingData(pixels=pixels, labels=labels, classes=classes, record=record)


def _count_unlisted(root: Path, used: int, skipped: int) -> int:
    """Image files found under the root that were neither used nor reported as skipped."""
    return max(0, sum(1 for _ in iter_image_files([root])) - used - skipped)


class BatchSampler:
    """Batch ``c`` of the run is a pure function of ``(seed, c)``: the positions
    ``c*B .. c*B+B-1`` of a stream of seeded per-epoch permutations. Each process takes its
    ``rows`` of the global batch."""

    def __init__(self, data: TrainingData, seed: int, global_batch: int, rows: slice, device: torch.device):
        self.data, self.seed, self.global_batch, self.rows, self.device = data, seed, global_batch, rows, device
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.data.pixels))
        return self._perms[epoch]

    def indices(self, counter: int) -> np.ndarray:
        """Dataset indices of global batch ``counter`` (all processes)."""
        n = len(self.data.pixels)
        positions = counter * self.global_batch + np.arange(self.global_batch)
        return np.array([self._perm(int(p // n))[int(p % n)] for p in positions])

    def batch(self, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's images (float in [-1, 1]) and labels of global batch ``counter``."""
        idx = torch.from_numpy(self.indices(counter)[self.rows])
        images = self.data.pixels[idx].to(self.device, torch.float32) / 127.5 - 1.0
        return cpu_layout(images, self.device), self.data.labels[idx].to(self.device)


# ----------------------------------------------------------------------------- distributed


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (world 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_kind: str) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def average_gradients(self, module: torch.nn.Module) -> None:
        """All-reduce and average the gradients of ``module`` (one flat buffer)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's buffers (batch-norm running statistics)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process (stop requests, time budgets)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def pick_device(kind: str, dist: Distributed | None = None) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is an input error."""
    if kind not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {kind}: must be auto, cpu or cuda")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available")
        return torch.device("cuda", dist.local_rank if dist else 0)
    return torch.device("cpu")


# ----------------------------------------------------------------------------- losses and EMA


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic or hinge loss of the discriminator."""
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic or hinge loss of the generator."""
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def ema_beta(batch_size: int, images_seen: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """StyleGAN2-ADA's EMA decay: a half-life of ``ema_kimg`` thousand images, shortened to
    ``ema_rampup`` x the images seen so far early in training."""
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup:
        ema_nimg = min(ema_nimg, images_seen * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """Move ``ema``'s parameters towards ``model``'s; copy buffers."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


# ----------------------------------------------------------------------------- stop requests


class StopRequest:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary (with a
    checkpoint), so a stopped run never loses more than the step in flight. A second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested (signal %d): finishing this step and writing a checkpoint", signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the trainer


def build_networks(arch: Architecture, config: Mapping[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Build the generator and discriminator from a run config, with clear errors."""
    try:
        return arch.build_generator(config), arch.build_discriminator(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"architecture {arch.name}: cannot build networks from the config: {exc}") from None


class Trainer:
    """One training run: networks, optimizers, data, and the loop."""

    def __init__(self, options: TrainOptions, plugins: Plugins | None = None) -> None:
        check_torch_version()
        self.options = options
        if options.threads is not None:
            torch.set_num_threads(int(options.threads))
        self.plugins = plugins or get_plugins()
        self.run_dir = Path(options.out)
        device_kind = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.dist = Distributed.from_env(device_kind)
        self.device = pick_device(options.device, self.dist)
        self.resuming = is_run_dir(self.run_dir)
        self.start: StartingPoint | None = None
        if self.resuming and not options.resume:
            raise InputError(f"--out {self.run_dir}: already holds a training run; pass --resume to "
                             "continue it, or choose a new folder")
        if not self.resuming and self.run_dir.exists() and any(p.name != LOCK_FILE for p in self.run_dir.iterdir()):
            raise InputError(f"--out {self.run_dir}: folder is not empty and holds no run")
        if self.resuming:
            stored = read_run_config(self.run_dir)
            _check_resume_options(options, stored)
            self.arch = self.plugins.component("architectures", stored["architecture"])
            self.data = load_training_data(
                stored["data"]["spec"], image_size=stored["image_size"], seed=stored["seed"],
                plugins=self.plugins, length=stored["options"].get("data_length"),
                label_attribute=stored["options"].get("label_attribute"), progress=self._show_progress)
            self.run_config = stored
        else:
            self.start = load_starting_point(options.init) if options.init is not None else None
            if self.start is not None:
                options = self.options = _defaults_from_start(options, self.start)
            if options.arch is None or options.data is None:
                raise InputError("--arch and --data are required for a new run")
            check_seed(options.seed or 0)
            self.arch = self.plugins.component("architectures", options.arch)
            resolve_settings(self.arch, options.preset, options.settings,  # fail before loading data
                             base=self.start.run_config["config"] if self.start is not None else None)
            self.data = load_training_data(
                options.data, image_size=options.image_size or 32, seed=options.seed or 0,
                plugins=self.plugins, length=options.data_length,
                label_attribute=options.label_attribute, progress=self._show_progress)
            self.run_config = new_run_config(options, self.arch, self.data.classes, self.data.record, self.plugins,
                                             self.start)
        self.config: dict[str, Any] = self.run_config["config"]
        self.schedule = _resolve_schedule(options, self.run_config.get("schedule", {}) if self.resuming else {})
        self._schedule_changed = self.run_config.get("schedule") != self.schedule
        self.run_config["schedule"] = self.schedule
        self.seed = int(self.run_config["seed"])
        self.conditioning = self.arch.conditioning
        self.global_batch = int(self.config["batch_size"])
        if self.global_batch % self.dist.world:
            raise InputError(f"--batch-size {self.global_batch} must divide by the {self.dist.world} processes")
        local = self.global_batch // self.dist.world
        self.rows = slice(self.dist.rank * local, (self.dist.rank + 1) * local)
        self.augment = parse_policy(str(self.config["augment"]))
        self.sampler = BatchSampler(self.data, self.seed, self.global_batch, self.rows, self.device)
        if int(self.config.get("mbstd_group", 0)) < 0:
            raise InputError(f"--set mbstd_group: must be 0 (off) or a group size, got {self.config['mbstd_group']}")
        self._build()
        if float(self.config.get("aux_weight", 0.0)) > 0:
            if self.conditioning == "none":
                raise InputError(f"--set aux_weight: architecture {self.arch.name} is unconditional; the "
                                 "auxiliary classifier loss needs labels")
            if not callable(getattr(self.D, "forward_with_classes", None)):
                raise InputError(f"--set aux_weight: the {self.arch.name} discriminator has no class head "
                                 "(forward_with_classes); use aux_weight 0")
        self._check_memory()

    @property
    def _show_progress(self) -> bool:
        return self.options.progress and int(os.environ.get("RANK", "0")) == 0

    # ------------------------------------------------------------------ setup

    def _build(self) -> None:
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        G, D = build_networks(self.arch, self.config)
        self.G, self.D = cpu_layout(G.to(self.device), self.device), cpu_layout(D.to(self.device), self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        betas = tuple(float(b) for b in self.config["betas"])
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=float(self.config["lr_g"]), betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=float(self.config["lr_d"]), betas=betas)
        self.step = 0
        self.images_seen = 0
        self.checkpoint: Path | None = None
        if self.resuming:
            found = load_latest_checkpoint(self.run_dir)
            if found is not None:
                self._restore(*found)
        elif self.start is not None:
            for prefix, module in (("G", self.G), ("G_ema", self.G_ema), ("D", self.D)):
                try:
                    unpack_module(prefix, module, self.start.tensors, self.start.path)
                except ModelLoadError as exc:
                    raise InputError(f"--init {self.start.source}: {exc.reason}; the settings given change the "
                                     "networks (drop those --set/--preset values)") from None

    def _step_bytes_per_sample(self) -> int:
        """Bytes that autograd keeps for the backward pass per sample, through G and then D:
        forward passes of two and of four samples counting the saved tensors (functional
        operations and per-sample weights included), less what does not grow with the
        batch (the weights). The networks' buffers and the random state are left as they were."""
        buffers = [(b, b.clone()) for net in (self.G, self.D) for b in net.buffers()]
        size = int(self.run_config["image_size"])
        counts = []
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                for n in (2, 4):
                    saved: dict[tuple[int, int, torch.dtype], int] = {}

                    def pack(value: torch.Tensor) -> torch.Tensor:
                        saved[(value.data_ptr(), value.numel(), value.dtype)] = value.numel() * value.element_size()
                        return value

                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda value: value):
                        labels = torch.zeros(n, dtype=torch.long, device=self.device)
                        kwargs: dict[str, Any] = {}
                        if self.conditioning == "label":
                            kwargs = {"labels": labels}
                        elif self.conditioning == "style":
                            real = cpu_layout(torch.zeros(n, 3, size, size, device=self.device), self.device)
                            self.G.style_from_images(real)  # the style encoder runs in every step too
                            kwargs = {"styles": self.G.style_from_labels(labels)}
                        fake = self.G(torch.zeros(n, int(self.config["z_dim"]), device=self.device), **kwargs)
                        self.D(fake, self._d_labels(labels))
                    counts.append(sum(saved.values()))
        finally:
            with torch.no_grad():
                for buffer, value in buffers:
                    buffer.copy_(value)
        return max(counts[1] - counts[0], 0) // 2

    def _check_memory(self) -> None:
        """Refuse a batch whose training step cannot fit in the memory there is, before
        anything is written, rather than be killed by the kernel part-way. The need is what
        autograd keeps per sample, times this process's samples, times the processes
        sharing the machine's memory on CPU. Measured against the growth of peak memory per
        sample (batches of 128 and 1,024, 32 and 64 px), it is 0.94-1.0 of it for dcgan and
        cgan and 0.70-0.75 for stylegan (its R1 penalty's second backward pass): a check
        that refuses what cannot fit, never what can."""
        if self.device.type == "cuda":
            available: int | None = int(torch.cuda.mem_get_info(self.device)[0])
            sharing = 1
        else:
            available = available_memory()
            sharing = int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world))
        if available is None:
            return
        try:
            per_sample = self._step_bytes_per_sample() * sharing
        except (RuntimeError, ValueError, TypeError) as exc:  # a plugin's networks that refuse two samples
            log.info("memory check skipped: a forward pass of two samples failed (%s)", exc)
            return
        local = self.global_batch // self.dist.world
        if per_sample * local <= available:
            return
        fits = max(available // per_sample * self.dist.world, 1)
        advice = ("a run keeps its batch size: free memory, or start a new run with a smaller --batch-size"
                  if self.resuming else "free memory or lower --batch-size")
        raise InputError(f"{self._batch_option()} {self.global_batch}: one training step needs about "
                         f"{per_sample * local / 1e9:.1f} GB of memory, {available / 1e9:.1f} GB is available; "
                         f"{advice} (about {fits} fits)")

    def _batch_option(self) -> str:
        return "the run's batch size" if self.resuming else "--batch-size"

    def _restore(self, path: Path, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> None:
        if record.get("architecture") != self.arch.name:
            raise InputError(f"{path}: checkpoint of architecture {record.get('architecture')!r}, run is {self.arch.name!r}")
        for prefix, module in (("G", self.G), ("G_ema", self.G_ema), ("D", self.D)):
            unpack_module(prefix, module, tensors, path)
        unpack_optimizer("opt_G", self.opt_G, tensors, record["optimizers"]["G"], path)
        unpack_optimizer("opt_D", self.opt_D, tensors, record["optimizers"]["D"], path)
        self.step = int(record["step"])
        self.images_seen = int(record["images_seen"])
        torch.set_rng_state(tensors["rng.torch"])
        rng = record["rng"]
        np.random.set_state((rng["numpy"][0], tensors["rng.numpy"].numpy().view(np.uint32), *rng["numpy"][1:]))
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        if torch.cuda.is_available() and "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.checkpoint = path
        log.info("resuming %s from %s (step %d)", self.run_dir, path.name, self.step)

    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / SAMPLES).mkdir(exist_ok=True)
        if not self.resuming:
            atomic_write_json(self.run_dir / TRAINING_DATA, self.data.record)
            atomic_write_json(self.run_dir / RUN_CONFIG, self.run_config)
        else:
            truncate_metrics(self.run_dir, self.step)
            if self._schedule_changed:  # a new schedule given on resume, or a run older than the field
                atomic_write_json(self.run_dir / RUN_CONFIG, self.run_config)

    # ------------------------------------------------------------------ one step

    def _conditioning(self, labels: torch.Tensor, real: torch.Tensor, *, train: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Keyword arguments for G, and the codes needed by style losses."""
        if self.conditioning == "none":
            return {}, {}
        if self.conditioning == "label":
            return {"labels": labels}, {}
        mask = (torch.rand(self.global_batch)[self.rows] < float(self.config["style_ref_prob"])).to(self.device)
        with torch.set_grad_enabled(train):
            from_labels = self.G.style_from_labels(labels)
            from_images = self.G.style_from_images(real)
        styles = torch.where(mask[:, None], from_images, from_labels)
        return {"styles": styles}, {"from_images": from_images}

    def _z(self) -> torch.Tensor:
        return torch.randn(self.global_batch, int(self.config["z_dim"]))[self.rows].to(self.device)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        if not self.augment:
            return images
        return diff_augment(images, self.augment, self.rows, self.global_batch)

    def _d_labels(self, labels: torch.Tensor) -> torch.Tensor | None:
        return labels if self.conditioning != "none" else None

    def _discriminate(self, images: torch.Tensor, labels: torch.Tensor,
                      classes: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D's logits on augmented ``images``, and its class scores when ``classes`` (the
        auxiliary classifier loss; conditional models only, so the labels are passed)."""
        if classes:
            return self.D.forward_with_classes(self._augment(images), labels)
        return self.D(self._augment(images), self._d_labels(labels)), None

    def train_step(self) -> dict[str, float]:
        """One generator step preceded by ``d_steps`` discriminator steps."""
        cfg = self.config
        loss_kind = str(cfg["loss"])
        d_steps = int(cfg["d_steps"])
        aux_weight = float(cfg.get("aux_weight", 0.0))  # runs made before the setting existed: 0
        out: dict[str, float] = {}
        self.D.requires_grad_(True)
        for k in range(d_steps):
            d_iter = self.step * d_steps + k
            real, labels = self.sampler.batch(d_iter)
            z = self._z()
            with torch.no_grad():
                kwargs, _ = self._conditioning(labels, real, train=False)
                fake = self.G(z, **kwargs)
            r1_now = float(cfg["r1_gamma"]) > 0 and d_iter % int(cfg["r1_every"]) == 0
            real_in = real.detach().requires_grad_(r1_now)
            logits_real, classes_real = self._discriminate(real_in, labels, classes=aux_weight > 0)
            logits_fake, _ = self._discriminate(fake, labels)
            loss_d = discriminator_loss(loss_kind, logits_real, logits_fake)
            if aux_weight > 0:
                aux_d = F.cross_entropy(classes_real, labels)
                loss_d = loss_d + aux_weight * aux_d
                out["aux_d"] = float(aux_d.detach())
                out["aux_acc_real"] = float((classes_real.detach().argmax(1) == labels).float().mean())
            if r1_now:
                (grad,) = torch.autograd.grad(logits_real.sum(), real_in, create_graph=True)
                penalty = grad.square().sum(dim=(1, 2, 3)).mean()
                loss_d = loss_d + penalty * (float(cfg["r1_gamma"]) / 2) * int(cfg["r1_every"])
                out["r1"] = float(penalty.detach())
            self.opt_D.zero_grad(set_to_none=True)
            loss_d.backward()
            self.dist.average_gradients(self.D)
            self.opt_D.step()
            out["loss_d"] = float(loss_d.detach())
            out["d_real"] = float(logits_real.detach().mean())
            out["d_fake"] = float(logits_fake.detach().mean())

        self.D.requires_grad_(False)
        z = self._z()
        kwargs, codes = self._conditioning(labels, real, train=True)
        fake = self.G(z, **kwargs)
        logits_fake, classes_fake = self._discriminate(fake, labels, classes=aux_weight > 0)
        loss_g = generator_loss(loss_kind, logits_fake)
        if aux_weight > 0:
            aux_g = F.cross_entropy(classes_fake, labels)
            loss_g = loss_g + aux_weight * aux_g
            out["aux_g"] = float(aux_g.detach())
        if self.conditioning == "style" and float(cfg["style_align"]) > 0:
            align = self._style_alignment(codes["from_images"], labels)
            loss_g = loss_g + float(cfg["style_align"]) * align
            out["style_align"] = float(align.detach())
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.dist.average_gradients(self.G)
        self.opt_G.step()
        self.dist.sync_buffers(self.G)
        self.dist.sync_buffers(self.D)
        out["loss_g"] = float(loss_g.detach())

        self.images_seen += self.global_batch
        self.step += 1
        beta = ema_beta(self.global_batch, self.images_seen, float(cfg["ema_kimg"]), float(cfg["ema_rampup"]))
        update_ema(self.G_ema, self.G, beta)
        return out

    def _style_alignment(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pull the encoder's code of a real image towards its style label's code: a
        classifier over cosine similarities to every label's code (temperature 0.1)."""
        table = self.G.style_from_labels(torch.arange(len(self.data.classes), device=self.device))
        logits = F.normalize(codes, dim=1) @ F.normalize(table, dim=1).t() / 0.1
        return F.cross_entropy(logits, labels)

    # ------------------------------------------------------------------ outputs

    def _checkpoint_record(self, metrics: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("G", self.G), ("G_ema", self.G_ema), ("D", self.D)):
            tensors.update(pack_module(prefix, module))
        opt_g, opt_g_rec = pack_optimizer("opt_G", self.opt_G)
        opt_d, opt_d_rec = pack_optimizer("opt_D", self.opt_D)
        tensors.update(opt_g)
        tensors.update(opt_d)
        tensors["rng.torch"] = torch.get_rng_state()
        np_state = np.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.uint32).view(np.int32).copy())
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        py_state = random.getstate()
        record = {
            "format": CHECKPOINT_FORMAT,
            "architecture": self.arch.name,
            "step": self.step,
            "images_seen": self.images_seen,
            "optimizers": {"G": opt_g_rec, "D": opt_d_rec},
            "augment": {"policy": ",".join(self.augment), "p": 1.0 if self.augment else 0.0},
            "rng": {"numpy": [np_state[0], *[_plain(v) for v in np_state[2:]]],
                    "python": [py_state[0], list(py_state[1]), py_state[2]]},
            "metrics": dict(metrics),
            "run": self.run_config,
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return tensors, record

    def save_checkpoint(self, metrics: Mapping[str, Any]) -> Path | None:
        """Write the checkpoint of the current step atomically, prune, redraw the curve,
        and fire ``artengine_checkpoint_saved``. Rank 0 only."""
        if not self.dist.is_main:
            return None
        tensors, record = self._checkpoint_record(metrics)
        path = checkpoint_path(self.run_dir, self.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(path, tensors, record)
        prune_checkpoints(self.run_dir, self.schedule["keep_checkpoints"])
        write_loss_curve(self.run_dir)
        self.checkpoint = path
        self.plugins.hook.artengine_checkpoint_saved(run_dir=str(self.run_dir), step=self.step, path=str(path),
                                                     metrics=dict(metrics))
        return path

    def save_samples(self) -> Path | None:
        """A fixed-noise grid from the EMA generator (the same latents every time)."""
        if not self.dist.is_main:
            return None
        from .data import image_grid
        from .models import GeneratorModel

        model = GeneratorModel(self.G_ema, self.run_config, weights_sha256="", device=self.device)
        count = 64
        latents = model.latents(self.seed, range(count))
        kwargs: dict[str, Any] = {}
        if self.conditioning != "none":
            kwargs["labels"] = [(i // 8) % len(self.data.classes) for i in range(count)]
        pixels = model.generate(latents, **kwargs)
        from PIL import Image

        grid = image_grid([Image.fromarray(p) for p in pixels], columns=8)
        path = self.run_dir / SAMPLES / f"step-{self.step:09d}.png"
        atomic_save_image(path, grid)
        return path

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        """Train until ``options.steps`` (total, including resumed steps), a time budget
        or a stop signal; checkpoint on the way out.

        One run trains in a run folder at a time (:class:`~artengine.journal.JobLock`,
        taken by the main process before it writes anything): a second one, started
        while the first loads or trains, is refused in one line instead of writing
        checkpoints beside it; so is one that finds, once it holds the folder, a run
        begun or a checkpoint written there since it looked."""
        if not self.dist.is_main:  # the main process holds the folder for the run
            return self._run()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = JobLock(self.run_dir, "run folder")
        lock.acquire()
        try:
            self._check_unchanged()
            return self._run()
        finally:
            lock.release()

    def _check_unchanged(self) -> None:
        """The run folder as it was when this run looked at it (another run may have
        written there while this one loaded its data and networks)."""
        if not self.resuming and is_run_dir(self.run_dir):
            raise InputError(f"--out {self.run_dir}: a training run was started in this folder while this one "
                             "was loading; pass --resume to continue it, or choose a new folder")
        if not self.resuming:
            return
        newest = max((step for step, _ in list_checkpoints(self.run_dir)), default=0)
        if newest > self.step:
            raise InputError(f"--out {self.run_dir}: another run wrote the checkpoint of step {newest} while this "
                             f"one was resuming from step {self.step}; run the command again to resume from it")

    def _run(self) -> TrainResult:
        options = self.options
        total = int(options.steps)
        self._write_run_files()
        if self.start is not None:
            self.save_checkpoint({})  # resuming before the first scheduled checkpoint starts from here
        self.dist.barrier()
        metrics_log = MetricsLog(self.run_dir) if self.dist.is_main else None
        last: dict[str, Any] = {}
        sums: dict[str, float] = {}
        counted = 0
        started = time.perf_counter()
        window_start, window_step = started, self.step
        interrupted = False
        self.G.train()
        self.D.train()
        bar = tqdm(total=total, initial=self.step, unit="step", desc=f"train {self.arch.name}",
                   disable=None if (options.progress and self.dist.is_main) else True, dynamic_ncols=True)
        try:
            with StopRequest() as stop:
                while self.step < total:
                    values = self.train_step()
                    for key, value in values.items():
                        sums[key] = sums.get(key, 0.0) + value
                    counted += 1
                    bar.update(1)
                    at_end = self.step >= total
                    over_time = options.max_seconds is not None and time.perf_counter() - started >= options.max_seconds
                    halt = self.dist.any(stop.requested or over_time) if (self.dist.enabled or stop.requested or over_time) else False
                    if self.step % self.schedule["log_every"] == 0 or at_end or halt:
                        now = time.perf_counter()
                        steps_done = self.step - window_step
                        last = {"step": self.step, "images_seen": self.images_seen,
                                **{k: v / counted for k, v in sums.items()},
                                "it_per_s": steps_done / max(now - window_start, 1e-9),
                                "img_per_s": steps_done * self.global_batch / max(now - window_start, 1e-9),
                                "elapsed_s": now - started}
                        if metrics_log is not None:
                            metrics_log.append(last)
                        bar.set_postfix(loss_d=f"{last.get('loss_d', 0):.3f}", loss_g=f"{last.get('loss_g', 0):.3f}")
                        sums, counted = {}, 0
                        window_start, window_step = now, self.step
                    if self.step % self.schedule["sample_every"] == 0 or at_end or halt:
                        self.save_samples()
                    if self.step % self.schedule["checkpoint_every"] == 0 or at_end or halt:
                        self.save_checkpoint(last)
                    if halt:
                        interrupted = stop.requested
                        break
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if isinstance(exc, RuntimeError) and not isinstance(exc, torch.OutOfMemoryError) \
                    and "can't allocate memory" not in str(exc):
                raise
            kept = f"checkpoint {self.checkpoint} is kept" if self.checkpoint else "no checkpoint was written"
            raise InputError(f"{self._batch_option()} {self.global_batch}: out of memory after step {self.step}; "
                             f"{kept}; free memory and --resume, or start a new run with a smaller --batch-size"
                             ) from None
        finally:
            bar.close()
            if metrics_log is not None:
                metrics_log.close()
        if self.step >= total and self.checkpoint is None:
            self.save_checkpoint(last)  # resumed at or past the target: still leave a checkpoint
        result = TrainResult(self.run_dir, self.step, self.checkpoint, last, interrupted=interrupted)
        if interrupted:
            raise TrainingInterrupted(f"training stopped at step {self.step}; checkpoint {self.checkpoint}; "
                                      "continue with --resume")
        return result


def _defaults_from_start(options: TrainOptions, start: StartingPoint) -> TrainOptions:
    """Options not given for a new run from a starting point: its architecture and image
    size (given ones must be the same), and its data (with its length and label attribute)
    unless other data is named. Checked before any data is loaded."""
    base = start.run_config
    where = f"--init {start.source}"
    if options.arch is not None and options.arch != base.get("architecture"):
        raise InputError(f"{where}: is a {base.get('architecture')} model, not {options.arch}; drop --arch")
    if options.image_size is not None and options.image_size != int(base["image_size"]):
        raise InputError(f"{where}: makes {base['image_size']} px images, not {options.image_size}; "
                         "drop --image-size")
    changes: dict[str, Any] = {"arch": base["architecture"], "image_size": int(base["image_size"])}
    if options.data is None:
        stored = base.get("options", {})
        changes.update(data=base["data"]["spec"],
                       data_length=options.data_length if options.data_length is not None else stored.get("data_length"),
                       label_attribute=options.label_attribute or stored.get("label_attribute"))
    return dataclasses.replace(options, **changes)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def train(options: TrainOptions, plugins: Plugins | None = None) -> TrainResult:
    """Train (or resume) a run; see :class:`TrainOptions`. Returns where it ended."""
    return Trainer(options, plugins).run()
