"""The built-in ``shapes`` dataset: procedural coloured shapes on patterned backgrounds.

Sample ``i`` of a set is a pure function of ``(seed, i, image_size, weights)``: a shape
(circle, square, triangle, star) in one of six colours, at a random size, position and
rotation, on a neutral background drawn in one of four styles. Every sample has a caption
and its attributes, so the set trains the GANs, the offline CLIP and the bias audit's
reference distribution without any download. The label is one attribute (``shape``) or
several joined with ``+`` (``shape+colour``: 24 classes named ``circle/red`` and so on), so a
conditional model can be told every attribute a studio wants to choose at generation time.
Drawn at 4x and box-filtered down, so edges are antialiased at 32 and 64 pixels alike.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from artengine import Dataset, InputError, Sample, hookimpl

ARTENGINE_HOOK_API = "1.0"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 90, 225),
    "yellow": (240, 205, 30),
    "purple": (140, 55, 185),
    "orange": (245, 125, 20),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "stripes", "dots")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "background": BACKGROUNDS,
}
_BACKGROUND_WORDS = {"plain": "plain", "gradient": "gradient", "stripes": "striped", "dots": "dotted"}
_CAPTIONS = (
    "a {colour} {shape} on a {bg} background",
    "{colour} {shape}, {bg} backdrop",
    "a picture of a {colour} {shape} over a {bg} background",
    "a {bg} background with a {colour} {shape}",
)
_SUPERSAMPLE = 4


@dataclass
class ShapesSet:
    """A deterministic, indexable set of shape images (an :class:`artengine.ImageSet`)."""

    image_size: int = 64
    seed: int = 0
    length: int = 10_000
    label_attribute: str = "shape"
    weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._label_parts = label_parts(self.label_attribute)
        self._probs = {name: _probabilities(name, values, self.weights.get(name))
                       for name, values in ATTRIBUTES.items()}
        for name in self.weights:
            if name not in ATTRIBUTES:
                raise InputError(f"shapes: unknown attribute {name!r} in weights")
        self.classes: Sequence[str] = ["/".join(combo) for combo in
                                       itertools.product(*(ATTRIBUTES[p] for p in self._label_parts))]
        self.attributes: Mapping[str, Sequence[str]] = ATTRIBUTES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index, self.image_size])
        attrs = {name: str(rng.choice(ATTRIBUTES[name], p=self._probs[name]))
                 for name in ("shape", "colour", "background")}
        image = render(attrs, self.image_size, rng)
        caption = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))].format(
            colour=attrs["colour"], shape=attrs["shape"], bg=_BACKGROUND_WORDS[attrs["background"]]
        )
        label = 0
        for part in self._label_parts:  # row-major over the parts, as the class names are listed
            label = label * len(ATTRIBUTES[part]) + ATTRIBUTES[part].index(attrs[part])
        return Sample(image=image, label=label, caption=caption, attributes=attrs,
                      source=f"shapes:seed={self.seed}:index={index}:size={self.image_size}")


def label_parts(label_attribute: str) -> tuple[str, ...]:
    """The attributes a label is made of: ``"shape+colour"`` -> ``("shape", "colour")``."""
    parts = tuple(p.strip() for p in str(label_attribute).split("+"))
    for part in parts:
        if part not in ATTRIBUTES:
            raise InputError(f"shapes: label attribute {part!r} is not one of {', '.join(ATTRIBUTES)} "
                             "(join several with +, e.g. shape+colour)")
    if len(set(parts)) != len(parts):
        raise InputError(f"shapes: label attribute {label_attribute!r} names an attribute twice")
    return parts


def _probabilities(name: str, values: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    if not weights:
        return np.full(len(values), 1.0 / len(values))
    unknown = set(weights) - set(values)
    if unknown:
        raise InputError(f"shapes: unknown {name} value(s) {sorted(unknown)} in weights")
    raw = np.array([float(weights.get(v, 0.0)) for v in values])
    if (raw < 0).any() or raw.sum() <= 0:
        raise InputError(f"shapes: weights for {name} must be non-negative and not all zero")
    return raw / raw.sum()


def render(attrs: Mapping[str, str], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one sample at ``image_size`` from its attributes and a seeded generator."""
    big = image_size * _SUPERSAMPLE
    canvas = Image.fromarray(_background(attrs["background"], big, rng), mode="RGB")
    jitter = rng.integers(-18, 19, size=3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[attrs["colour"]], jitter))
    radius = big * rng.uniform(0.22, 0.34)
    cx = big / 2 + rng.uniform(-0.14, 0.14) * big
    cy = big / 2 + rng.uniform(-0.14, 0.14) * big
    angle = rng.uniform(0, 2 * math.pi)
    draw = ImageDraw.Draw(canvas)
    shape = attrs["shape"]
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, angle), fill=colour)
    return canvas.reduce(_SUPERSAMPLE)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "triangle":
        corners = [angle + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + 1.15 * r * math.cos(a), cy + 1.15 * r * math.sin(a)) for a in corners]
    if shape == "star":
        points = []
        for k in range(10):
            radius = 1.2 * r if k % 2 == 0 else 0.5 * r
            a = angle + k * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates in [0, 1), float32 (read-only: shared between calls)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _background(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A neutral (low-saturation) background so the shape alone carries the colour."""
    base = rng.uniform(40, 215)
    other = base + rng.choice([-1, 1]) * rng.uniform(30, 55)
    tint = rng.uniform(-8, 8, size=3)
    tone_a = np.clip(base + tint, 0, 255)
    tone_b = np.clip(other + tint, 0, 255)
    yy, xx = _grid(size)
    if style == "plain":
        return np.broadcast_to(tone_a.astype(np.uint8), (size, size, 3)).copy()
    if style == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        mix = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) + 0.5
        mix = np.clip(mix, 0, 1)
        # tone_a * (1 - mix) + tone_b * mix, a channel at a time: the same float64 operations
        # on each pixel as the blend broadcast over (size, size, 3), at half the time.
        keep = 1 - mix
        pixels = np.empty((size, size, 3), np.uint8)
        for channel in range(3):
            pixels[..., channel] = tone_a[channel] * keep + tone_b[channel] * mix
        return pixels
    # Stripes and dots mix the tones by 0 or 1 per pixel, so each pixel is exactly one tone
    # (tone * 1 + other tone * 0, with tones >= 0): a lookup gives the blend's bytes.
    if style == "stripes":
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(0.12, 0.2)
        phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period
        mask = (np.floor(phase) % 2) != 0
    elif style == "dots":
        period = rng.uniform(0.12, 0.18)
        fx = (xx / period) % 1.0 - 0.5
        fy = (yy / period) % 1.0 - 0.5
        mask = (fx * fx + fy * fy) < 0.09
    else:
        raise ValueError(f"unknown background {style!r}")
    return np.stack([tone_a, tone_b]).astype(np.uint8)[mask.view(np.uint8)]


def open_shapes(
    source: str | None,
    *,
    image_size: int = 64,
    seed: int = 0,
    length: int = 10_000,
    label_attribute: str = "shape",
    weights: Mapping[str, Mapping[str, float]] | None = None,
    **_: object,
) -> ShapesSet:
    """Open the procedural set; ``source`` is unused (the set needs no files)."""
    return ShapesSet(image_size=image_size, seed=seed, length=length,
                     label_attribute=label_attribute, weights=weights or {})


@hookimpl
def artengine_datasets() -> list[Dataset]:
    return [
        Dataset(
            name="shapes",
            description="procedural coloured shapes (4 shapes x 6 colours x 4 backgrounds) "
            "with captions; deterministic per seed; no download",
            open=open_shapes,
        )
    ]
