"""Trained generators: loading (safetensors only) and reproducible generation.

``load_model(path)`` accepts a run directory (newest good checkpoint), a checkpoint file, or
weights exported with :func:`export_generator`, and returns a :class:`GeneratorModel` built
around the EMA generator. Pickles are refused unless the caller opts in explicitly.

Reproducibility contract: image ``i`` of a job is a function of (model weights, seed, i,
conditioning) only, byte for byte, whatever the batch size, the worker count or the resume
history, on a given machine type and torch build. Measured on CPU (see docs/training.md):
the same latent gives different bits when computed in a batch of 1 and of 64 (GEMM
blocking; up to 73 % of 64x64 images differ in at least one byte), and different bits under
1 and 2 threads at some batch sizes; it gives identical bits at any position inside a batch
of fixed size. So :meth:`GeneratorModel.generate` always runs the network on chunks of
exactly :data:`GENERATION_CHUNK` samples (the last chunk padded) under a fixed thread
count, and :meth:`GeneratorModel.latents` draws latent ``i`` from its own seeded stream.
A chunk of 32 is as fast as larger batches here, so the guarantee costs nothing measurable
for large jobs (``benchmarks/bench_train.py``).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .architecture import cpu_layout
from .checkpoints import (
    CHECKPOINT_FORMAT,
    GENERATOR_FORMAT,
    INIT_FORMAT,
    check_torch_version,
    PickleRefused,
    load_pickle,
    load_weights,
    run_weights,
    save_weights,
    unpack_module,
)
from .errors import InputError, ModelLoadError
from .io import LoadedImage, sha256_file
from .plugins import Plugins, get_plugins
from .runs import read_run_config

log = logging.getLogger("artengine.models")

#: Every forward pass of a generator runs on exactly this many samples.
GENERATION_CHUNK = 32
#: torch intra-op threads during generation (results can depend on the thread count).
GENERATION_THREADS = 1


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: for manifests, reports and job specs."""

    name: str
    architecture: str
    image_size: int
    conditioning: str  # "none" | "label" | "style"
    class_names: list[str]
    style_names: list[str]
    weights_sha256: str  # sha256 of the weights file read (checkpoint or export)
    z_dim: int
    style_dim: int | None = None
    step: int | None = None
    path: str = ""
    source: str = ""  # "run", "checkpoint", "export" or "pickle"
    pickle_opt_in: bool = False  # True when loaded from a pickle after an explicit opt-in
    training_data: dict[str, Any] = field(default_factory=dict)  # the run's dataset spec

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def fixed_threads(count: int) -> Iterator[None]:
    """Run torch on exactly ``count`` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


class GeneratorModel:
    """A trained generator ready for reproducible generation."""

    def __init__(self, generator: torch.nn.Module, run_config: Mapping[str, Any], *, weights_sha256: str,
                 device: str | torch.device = "cpu", path: str = "", source: str = "", step: int | None = None,
                 pickle_opt_in: bool = False, threads: int = GENERATION_THREADS,
                 chunk: int = GENERATION_CHUNK) -> None:
        self.generator = cpu_layout(generator.to(device), device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.run_config = dict(run_config)
        self.threads, self.chunk = int(threads), int(chunk)
        conditioning = run_config["conditioning"]
        self.info = ModelInfo(
            name=str(run_config.get("name", "")),
            architecture=str(run_config["architecture"]),
            image_size=int(run_config["image_size"]),
            conditioning=conditioning,
            class_names=list(run_config.get("class_names", [])),
            style_names=list(run_config.get("style_names", [])),
            weights_sha256=weights_sha256,
            z_dim=int(run_config["z_dim"]),
            style_dim=int(getattr(generator, "style_dim", 0)) or None,
            step=step,
            path=path,
            source=source,
            pickle_opt_in=pickle_opt_in,
            training_data=dict(run_config.get("data", {})),
        )

    # ------------------------------------------------------------------ inputs

    def latents(self, seed: int, indices: Iterable[int]) -> torch.Tensor:
        """Latent vectors ``(N, z_dim)`` float32; latent ``i`` depends only on ``(seed, i)``."""
        rows = [np.random.default_rng([int(seed), int(i)]).standard_normal(self.info.z_dim, dtype=np.float32)
                for i in indices]
        if not rows:
            return torch.empty((0, self.info.z_dim))
        return torch.from_numpy(np.stack(rows))

    @property
    def shown_name(self) -> str:
        """How messages name the model: the file or folder it was loaded from (what the user
        gave), else its run's name (a run's stored name may be a bare letter)."""
        return self.info.path or self.info.name

    @property
    def label_names(self) -> list[str]:
        """The names the model's labels (classes or styles) are given by."""
        return self.info.class_names or self.info.style_names

    def label_indices(self, labels: Sequence[int | str] | int | str, count: int) -> torch.Tensor:
        """Class or style labels, given by name or index (one value is repeated), as int64."""
        names = self.label_names
        values = [labels] * count if isinstance(labels, (int, str, np.integer)) else list(labels)
        if len(values) != count:
            raise InputError(f"{len(values)} labels for {count} latents")
        out = []
        for value in values:
            if isinstance(value, str):
                if value not in names:
                    raise InputError(f"label {value!r}: model {self.shown_name!r} knows "
                                     + (", ".join(names) or "no labels"))
                out.append(names.index(value))
            else:
                index = int(value)
                if not 0 <= index < len(names):
                    raise InputError(f"label index {index}: model has {len(names)} labels")
                out.append(index)
        return torch.tensor(out, dtype=torch.int64)

    def style_from_label(self, label: int | str) -> torch.Tensor:
        """The style code ``(style_dim,)`` of a style name (style models only)."""
        self._require_style()
        with torch.no_grad():
            return self.generator.style_from_labels(self.label_indices([label], 1).to(self.device))[0].cpu()

    def style_from_image(self, image: Image.Image | LoadedImage | np.ndarray) -> torch.Tensor:
        """The style code ``(style_dim,)`` of a reference image (style models only).

        The image is centre-cropped to a square and resized to the model's size, as the
        training images were. Read files with :func:`artengine.open_image` first."""
        self._require_style()
        pixels = _reference_pixels(image, self.info.image_size)
        x = torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float().div(127.5).sub(1.0)[None].to(self.device)
        with torch.no_grad(), fixed_threads(self.threads):
            return self.generator.style_from_images(x)[0].cpu()

    def _require_style(self) -> None:
        if self.info.conditioning != "style":
            raise InputError(f"model {self.shown_name!r} ({self.info.architecture}) is not a style model")

    # ------------------------------------------------------------------ generation

    def generate(self, latents: torch.Tensor | np.ndarray, labels: Sequence[int | str] | int | str | None = None,
                 styles: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Images ``(N, H, W, 3)`` uint8 for ``latents`` (from :meth:`latents`).

        Label models need ``labels`` (names or indices; one value applies to all). Style
        models take ``styles`` (``(N, style_dim)`` or one ``(style_dim,)`` code, from
        :meth:`style_from_label` / :meth:`style_from_image`) or ``labels`` (style names).
        Each image depends only on its own latent and conditioning (see the module doc).
        """
        z = torch.as_tensor(latents, dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self.info.z_dim:
            raise InputError(f"latents must have shape (N, {self.info.z_dim}), got {tuple(z.shape)}")
        count = z.shape[0]
        kwargs = self._conditioning(count, labels, styles)
        out = np.empty((count, self.info.image_size, self.info.image_size, 3), dtype=np.uint8)
        with torch.no_grad(), fixed_threads(self.threads):
            for start in range(0, count, self.chunk):
                stop = min(start + self.chunk, count)
                chunk_kwargs = {k: _padded(v[start:stop], self.chunk) for k, v in kwargs.items()}
                images = self.generator(_padded(z[start:stop], self.chunk).to(self.device), **chunk_kwargs)
                out[start:stop] = to_uint8(images[: stop - start])
        return out

    def _conditioning(self, count: int, labels: Any, styles: Any) -> dict[str, torch.Tensor]:
        kind = self.info.conditioning
        if kind == "none":
            if labels is not None or styles is not None:
                raise InputError(f"model {self.shown_name!r} is unconditional: no labels or styles")
            return {}
        if kind == "label":
            if styles is not None:
                raise InputError(f"model {self.shown_name!r} takes class labels, not styles")
            if labels is None:
                raise InputError(f"model {self.shown_name!r} needs a class label (one of {', '.join(self.label_names)})")
            return {"labels": self.label_indices(labels, count).to(self.device)}
        if styles is None:
            if labels is None:
                raise InputError(f"model {self.shown_name!r} needs a style name or a style reference image")
            with torch.no_grad():
                codes = self.generator.style_from_labels(self.label_indices(labels, count).to(self.device))
            return {"styles": codes}
        codes = torch.as_tensor(styles, dtype=torch.float32)
        if codes.ndim == 1:
            codes = codes[None].expand(count, -1)
        if codes.shape != (count, self.info.style_dim):
            raise InputError(f"styles must have shape ({count}, {self.info.style_dim}), got {tuple(codes.shape)}")
        return {"styles": codes.to(self.device)}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output in ``[-1, 1]`` (NCHW) to uint8 pixels (NHWC)."""
    pixels = images.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _padded(values: torch.Tensor, size: int) -> torch.Tensor:
    """Pad a chunk to exactly ``size`` rows with zeros (the padding's outputs are dropped)."""
    missing = size - values.shape[0]
    if missing <= 0:
        return values
    return torch.cat([values, values.new_zeros((missing, *values.shape[1:]))])


def _reference_pixels(image: Image.Image | LoadedImage | np.ndarray, size: int) -> np.ndarray:
    if isinstance(image, LoadedImage):
        image = image.rgb
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8), mode="RGB")
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.uint8)


# ----------------------------------------------------------------------------- loading


def _generator_for(run_config: Mapping[str, Any], plugins: Plugins, source: Path) -> torch.nn.Module:
    name = run_config.get("architecture")
    components = plugins.components("architectures")
    if name not in components:
        raise ModelLoadError(source, f"needs architecture {name!r}, which no loaded plugin provides "
                                     f"(available: {', '.join(sorted(components)) or 'none'})")
    try:
        return components[name].build_generator(run_config["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(source, f"cannot build the {name} generator from its config: {exc}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", *, allow_pickle: bool = False,
               plugins: Plugins | None = None, threads: int = GENERATION_THREADS) -> GeneratorModel:
    """Load the EMA generator of a run directory, a checkpoint file or exported weights.

    Only safetensors files are read. A pickle (``.pt``, ``.pkl``, ``torch.save`` output) is
    refused with :class:`ModelLoadError` unless ``allow_pickle`` is True; that opt-in is
    logged and recorded in ``model.info.pickle_opt_in``. A damaged newest checkpoint of a
    run falls back to the previous good one.
    """
    check_torch_version()
    plugins = plugins or get_plugins()
    source = Path(path)
    if source.is_dir():
        file, tensors, record = run_weights(source)
        run_config = read_run_config(source)
        kind = "run"
    elif not source.is_file():
        raise ModelLoadError(source, "no such file or folder")
    else:
        try:
            tensors, record = load_weights(source)
        except PickleRefused:
            if not allow_pickle:
                raise
            return _load_pickled(source, device, plugins, threads)
        if record.get("format") not in (CHECKPOINT_FORMAT, GENERATOR_FORMAT, INIT_FORMAT):
            raise ModelLoadError(source, f"unknown weights format {record.get('format')!r}")
        run_config = record["run"]
        file = source
        kind = "checkpoint" if record["format"] == CHECKPOINT_FORMAT else "export"
    generator = _generator_for(run_config, plugins, file)
    unpack_module("G_ema", generator, tensors, file)
    # Weights exported from an opted-in pickle keep saying so (the export records it), so
    # a job's report shows it for every model made that way.
    exported_from = record.get("exported_from")
    opted_in = isinstance(exported_from, Mapping) and exported_from.get("pickle_opt_in") is True
    return GeneratorModel(generator, run_config, weights_sha256=sha256_file(file), device=device,
                          path=str(source), source=kind, step=record.get("step"), pickle_opt_in=opted_in,
                          threads=threads)


def _load_pickled(source: Path, device: Any, plugins: Plugins, threads: int) -> GeneratorModel:
    """A pickle the user opted into: a dict with ``run`` (the run config) and ``G_ema`` (a
    state dict), as older tooling saved them."""
    obj = load_pickle(source)
    if not isinstance(obj, Mapping) or "run" not in obj or not isinstance(obj.get("G_ema"), Mapping):
        raise ModelLoadError(source, "pickle does not hold an artengine generator (expected a dict "
                                     "with 'run' and 'G_ema')")
    run_config = obj["run"]
    generator = _generator_for(run_config, plugins, source)
    unpack_module("G_ema", generator, {f"G_ema.{k}": v for k, v in obj["G_ema"].items()}, source)
    return GeneratorModel(generator, run_config, weights_sha256=sha256_file(source), device=device,
                          path=str(source), source="pickle", step=obj.get("step"), pickle_opt_in=True,
                          threads=threads)


def export_generator(source: str | Path, out: str | Path, *, allow_pickle: bool = False,
                     plugins: Plugins | None = None) -> Path:
    """Write the EMA generator of a run (or checkpoint, or opted-in pickle) as a standalone
    safetensors file: the weights plus the run config, nothing else."""
    model = load_model(source, allow_pickle=allow_pickle, plugins=plugins)
    tensors = {f"G_ema.{k}": v for k, v in model.generator.state_dict().items()}
    record = {
        "format": GENERATOR_FORMAT,
        "run": model.run_config,
        "step": model.info.step,
        "exported_from": {"path": model.info.path, "sha256": model.info.weights_sha256,
                          "pickle_opt_in": model.info.pickle_opt_in},
    }
    target = Path(out)
    if target.suffix != ".safetensors":
        raise InputError(f"{target}: exported weights must be a .safetensors file")
    return save_weights(target, tensors, record)
