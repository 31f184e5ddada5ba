"""Datasets: the first step of the data path.

A dataset plugin registers :class:`Dataset` components; ``--data NAME`` opens one by
name, ``--data PATH`` opens a folder through the dataset that handles paths (the built-in
``imagefolder``). Opening gives an :class:`ImageSet`: a sized, indexable collection of
:class:`Sample`, deterministic for a given seed.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .errors import InputError


@dataclass(frozen=True)
class Sample:
    """One training image with what is known about it."""

    image: Image.Image  # RGB, image_size x image_size
    label: int | None  # index into ImageSet.classes, or None when unlabelled
    caption: str  # a sentence describing the image ("" when unknown)
    attributes: Mapping[str, str] = field(default_factory=dict)  # e.g. {"colour": "red"}
    source: str = ""  # file path, or a reproducible id such as "shapes:seed=0:index=12"


@runtime_checkable
class ImageSet(Protocol):
    """What a dataset's ``open`` returns."""

    #: Class names; ``Sample.label`` indexes this list. Empty for unlabelled data.
    classes: Sequence[str]
    #: Attribute name -> possible values (used for bias reference distributions).
    attributes: Mapping[str, Sequence[str]]
    #: Side length of every image.
    image_size: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


@dataclass(frozen=True)
class Dataset:
    """A named data source registered through ``artengine_datasets``."""

    name: str
    description: str
    open: Callable[..., ImageSet]  # open(source, *, image_size, seed, **options)
    handles_paths: bool = False  # True: opens folders given as --data PATH
    image_sizes: tuple[int, ...] = (32, 64)


SUPPORTED_IMAGE_SIZES = (32, 64, 128, 256)


def label_factors(classes: Sequence[str]) -> list[list[str]] | None:
    """The parts of joint labels (``circle/red``, ``circle/green``, ...): the values of each
    part, when the class names are every combination of them in row-major order (as a
    dataset labelled by several attributes lists them); ``None`` for plain labels."""
    split = [str(c).split("/") for c in classes]
    width = len(split[0]) if split else 0
    if width < 2 or any(len(parts) != width for parts in split):
        return None
    values = [list(dict.fromkeys(parts[k] for parts in split)) for k in range(width)]
    if ["/".join(combo) for combo in itertools.product(*values)] != list(classes):
        return None
    return values


def factor_sizes(classes: Sequence[str]) -> list[int] | None:
    """The number of values of each part of joint labels; ``None`` for plain labels."""
    parts = label_factors(classes)
    return [len(values) for values in parts] if parts else None


def joint_log_probs(part_logits: Any, factors: Sequence[int]) -> Any:
    """Scores of each part's values side by side (``(N, sum(factors))``, a torch tensor) to
    log-probabilities of every joint label (``(N, prod(factors))``, row-major, as
    :func:`label_factors` orders them): the sum of the parts' log-softmaxes. The
    cross-entropy of these is the sum of the parts' own, so each part learns from every
    image instead of one joint class in prod(factors) learning from its few."""
    import torch.nn.functional as F

    joint = part_logits.new_zeros(len(part_logits), 1)
    for part in part_logits.split(list(factors), dim=1):
        joint = (joint[:, :, None] + F.log_softmax(part, dim=1)[:, None, :]).flatten(1)
    return joint


def open_dataset(
    spec: str,
    *,
    image_size: int,
    seed: int = 0,
    datasets: Mapping[str, Dataset],
    **options: Any,
) -> ImageSet:
    """Open ``spec`` (a registered dataset name, or a folder path) at ``image_size``."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise InputError(
            f"--image-size {image_size}: supported sizes are "
            + ", ".join(str(s) for s in SUPPORTED_IMAGE_SIZES)
        )
    if spec in datasets:
        dataset = datasets[spec]
        return dataset.open(None, image_size=image_size, seed=seed, **options)
    path = Path(spec)
    if path.exists():
        handlers = [d for d in datasets.values() if d.handles_paths]
        if not handlers:
            raise InputError(f"--data {spec}: no loaded dataset plugin opens folders")
        if not path.is_dir():
            raise InputError(f"--data {spec}: not a folder of images")
        return handlers[0].open(str(path), image_size=image_size, seed=seed, **options)
    names = ", ".join(sorted(datasets)) or "none"
    raise InputError(f"--data {spec}: neither a dataset name ({names}) nor an existing folder")


def to_array(sample_images: Sequence[Image.Image]) -> np.ndarray:
    """Stack RGB images into a ``(N, 3, H, W)`` float32 array scaled to [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in sample_images])
    return (arr.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1.0


def image_grid(images: Sequence[Image.Image], columns: int = 8, padding: int = 2,
               background: tuple[int, int, int] = (24, 24, 24)) -> Image.Image:
    """Tile equally sized RGB images into one grid image (sample sheets, previews)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    width, height = images[0].size
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    grid = Image.new(
        "RGB",
        (columns * width + (columns + 1) * padding, rows * height + (rows + 1) * padding),
        background,
    )
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(image.convert("RGB"), (padding + c * (width + padding), padding + r * (height + padding)))
    return grid
