"""Perceptual hashes for the near-duplicate audit: imagehash's algorithms, computed fast.

imagehash is the reference implementation and stays so: every hash here is
``imagehash.phash`` / ``imagehash.dhash``, bit for bit. What we add is the order of work
(the pHashes of one image's variants come from one stacked DCT, with imagehash's own scipy
calls; ``tests/test_hashing.py`` checks every bit against imagehash).
imagehash resizes the full colour image to 32x32 with a Lanczos filter, which is most of
its time on a 512x512 image. We first convert to greyscale (imagehash hashes luminance
anyway), then shrink with ``Image.reduce`` (a box filter, very fast on one channel) to an
intermediate whose shorter side is still at least :data:`INTERMEDIATE_SIDE` pixels, and make
imagehash's own Lanczos resize from there (:func:`lanczos`: Pillow's pixels, from two matrix
products with Pillow's integer coefficients). That is the trick Pillow's
``reducing_gap`` uses; the bits stay within a mean of well under 2 of imagehash on the full
image (``tests/test_hashing.py`` checks it), at about 3x the speed
(``benchmarks/bench_hashing.py``).

One decode and one shared intermediate feed every hash of an image: the 64-bit pHash and
dHash of the image, of the image turned over (mirrored, flipped, rotated by 90°, 180° or
270°) and of the picture inside a border, flat or mirroring it, if it has one (query
side), or of a set of crops (reference side, so that a cropped copy still lands near one
of them), of its top and bottom bands (both sides, so that a copy with a caption across
it still matches on the band the caption missed), the pHash of each of these after
histogram equalisation (a second opinion on low-detail images, whose plain hashes follow
faint gradients), a PDQ-style quality score that says when an image has too little
detail for its hash to mean anything, and a colour signature (the chromaticity of the
image's mean colour) that tells apart pictures whose greyscale hashes agree but whose
colours do not.

Hashes are ``numpy.uint64`` values: the 64 bits of imagehash's hash in row-major order,
most significant bit first, so ``f"{value:016x}"`` is imagehash's own hex string
(``imagehash.hex_to_hash`` reads it back).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import imagehash
import numpy as np
from PIL import Image

#: Name and version of the hash scheme: the algorithms, the intermediate size and the
#: reference variants. A registry built with another scheme is refused, not searched.
HASH_SCHEME = "artengine-hashes/2"
#: The hash algorithms a match is judged on, each a 64-bit imagehash hash.
ALGORITHMS: tuple[str, ...] = ("phash", "dhash")
#: The pHash of the histogram-equalised greyscale: the image is first shrunk to pHash's
#: own 32x32 input (Lanczos, as imagehash does), then equalised (``ImageOps.equalize``),
#: then hashed (``imagehash.phash``). Equalising after the shrink keeps JPEG block noise
#: of flat areas from being stretched into the hash. Equalisation is a monotone remapping
#: of grey levels, so a brightness or contrast change barely moves it, while it spreads
#: the faint tones of a smooth picture (sky, gradient) over the whole range: two different
#: smooth pictures whose plain hashes agree usually disagree here. The near-duplicate
#: audit asks it to agree on matches involving a low-detail image (calibrated with
#: benchmarks/bench_near_duplicate.py --sweep).
EQUALISED = "phash_eq"
EQUALISED_SIDE = 32  # imagehash.phash's input side (hash_size 8 x highfreq_factor 4)
DHASH_SIZE = 8  # imagehash.dhash's hash_size: its input is (hash_size + 1) x hash_size
#: Every hash stored per variant: :data:`ALGORITHMS`, then :data:`EQUALISED`.
COLUMNS: tuple[str, ...] = (*ALGORITHMS, EQUALISED)
#: Shorter side of the shared intermediate. imagehash's own Lanczos resize then shrinks by
#: at least 4x for the 32x32 pHash input, so the box-filter step leaves no visible trace.
INTERMEDIATE_SIDE = 128
#: Side of the luminance image the quality score is measured on (as in PDQ).
QUALITY_SIDE = 64
#: Below this quality (0-100) a hash is not reliable evidence. PDQ's formula, our cut-off:
#: measured on photographs and shapes (benchmarks/bench_near_duplicate.py), copies of
#: quality >= 20 are found as reliably as detailed ones (recall 1.00 at 20-50 on JPEG,
#: brightness, colour, crop and mirror copies), while below 10 flat images start to match
#: unrelated flat images. PDQ's own cut-off, 50, is for its 256-bit hash and would leave
#: 17 % of real photographic crops unjudged.
MIN_RELIABLE_QUALITY = 20

#: Reference-side variants: (name, crop scale, horizontal anchor, vertical anchor). A crop
#: of scale s keeps s x s of the picture; the anchors place it (0 left/top, 1 right/bottom).
#: Measured (benchmarks/bench_near_duplicate.py): the 3x3 grid at scales 0.95 and 0.90
#: brings recall on 5-10 % crops from 0.44 (full image only) to >= 0.98.
CROP_SCALES: tuple[float, ...] = (0.95, 0.90)
CROP_ANCHORS: tuple[float, ...] = (0.0, 0.5, 1.0)
#: Parts of a reference a deeper cut may show (a copy with up to a quarter of each side
#: cut away): the boxes of its stored thumbnail a whole-image match is correlated with
#: when the whole thumbnail does not correlate (``ReferenceRegistry.part_correlation``):
#: every scale at a 5x5 grid of anchors, then the best one's neighbours at half the steps.
PART_SCALES: tuple[float, ...] = (0.75, 0.80, 0.85, 0.90)
PART_ANCHORS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
PART_REFINE: tuple[float, float] = (0.025, 0.125)  # scale, anchor
#: The query variants a part of a reference is searched for: the image as it stands and
#: its mirror image. Every turned variant was measured too: it named 11 more shapes
#: distractors of 500 on the calibration corpus, against 1.
PART_VARIANTS: tuple[str, ...] = ("full", "mirror")
#: Horizontal bands hashed on both sides: the top and the bottom of the picture, each
#: ``(1 - BAND_GAP) / 2`` of its height, so that any horizontal strip (a caption, a credit
#: line) up to ``BAND_GAP`` of the height tall misses one of them. A band is only matched
#: against the same band of a reference. Measured (benchmarks/bench_near_duplicate.py,
#: calibration seed): with a gap of 0.12, recall under a caption overlay goes from 0.89 to
#: 0.99 without a false positive more; a gap of 0.2 (smaller bands) adds false positives.
BAND_GAP = 0.12
BAND_VARIANTS: tuple[str, ...] = ("band-top", "band-bottom")
#: Whole-image query variants besides the image itself, each the image turned over in a
#: way a copyist may have turned it: left-right ("mirror"), top-bottom ("flip"), both
#: ("rotate180") and by a quarter turn either way, with the transposition that makes it.
#: The flips are hashed from the image's own resized hash inputs (flipping commutes with
#: the symmetric Lanczos resize), a quarter turn from the turned intermediate and the other
#: from its inputs turned half over; a copy turned over is searched for without storing
#: turned references.
TURNED_VARIANTS: dict[str, Image.Transpose] = {
    "mirror": Image.Transpose.FLIP_LEFT_RIGHT,
    "flip": Image.Transpose.FLIP_TOP_BOTTOM,
    "rotate180": Image.Transpose.ROTATE_180,
    "rotate90": Image.Transpose.ROTATE_90,  # a quarter turn anticlockwise
    "rotate270": Image.Transpose.ROTATE_270,
}
#: The query variant of the picture inside a border, flat (a mount, a letterbox or
#: pillarbox bar) or mirroring the picture (padding by reflection): the image with every
#: side's border cut off (:func:`border_box`). Hashed
#: only for images that have such a border, and confirmed like a turned variant (the cut
#: reframes the picture, and reframed pictures resemble more of each other).
TRIMMED = "trimmed"
#: The query variant of a copy turned by a few degrees with its size kept, the corners
#: the turn uncovered filled with one colour (as image editors do): the image turned back
#: by the angle :func:`tilt` reads off those corners, the corners the turn cut off filled
#: with the picture's mean grey, and cut to the middle ``CROP_SCALES[-1]`` of each side,
#: the centred crop every reference stores. Hashed only for images whose corners show
#: such a turn, and confirmed like a turned variant: the largest centred box of it that
#: holds none of the corners cut off, against the reference's thumbnail cut to the same
#: box (:attr:`ImageHashes.variant_box`).
STRAIGHTENED = "straightened"
#: Query variants whose matches count only when the luminance thumbnails agree too (the
#: search's ``correlation`` bound, the thumbnail turned the same way, or the variant's
#: own): a flip or a turn makes many pictures resemble some other one (skies and floors,
#: symmetric shapes). Measured (benchmarks/bench_near_duplicate.py --seed 7 --distractors
#: 35000): without it the flip and half-turn variants took the false positives from 12 to
#: 18 of 30,000 photographs and from 884 to 1,307 of 5,000 shapes; with it 12 and 925 (958
#: with the quarter turns), every flipped or turned copy still named; 99.8 % of flipped or
#: half-turned JPEG copies of photographs correlate at 0.96 or more.
CONFIRMED_VARIANTS: tuple[str, ...] = ("flip", "rotate180", "rotate90", "rotate270", TRIMMED, STRAIGHTENED)
#: The query variants every image has, in row order; after them, an image with a border
#: has :data:`TRIMMED`, and one turned by a few degrees in its frame :data:`STRAIGHTENED`.
QUERY_VARIANTS: tuple[str, ...] = ("full", *TURNED_VARIANTS, *BAND_VARIANTS)
#: A side of the hashing intermediate counts as a border when at least this share of its
#: lines (rows for the top and bottom, columns for the sides), counted from the edge, each
#: stay within :data:`BORDER_TOLERANCE` grey levels of the outermost line's mid-grey; the
#: picture left inside must keep at least :data:`BORDER_MIN_PICTURE` of each side.
BORDER_MIN_SHARE = 0.02
BORDER_TOLERANCE = 12
BORDER_MIN_PICTURE = 0.4
#: How many lines past a border's last flat line its edge may lie (a JPEG's ringing, the
#: shrink's blend): the line this far in must be mostly picture for the border to count.
BORDER_EDGE_LINES = 6
#: A border mirroring the picture (padding by reflection) is looked for up to this share of
#: each side, where its outermost two lines match a facing pair by MIRROR_STANDOUT of the
#: mean over the axes tried; it counts when it differs from the reversed lines it faces by
#: at most MIRROR_RATIO of how much it differs from them unreversed, with at least
#: MIRROR_MIN_DETAIL grey levels of mean difference unreversed (:func:`_mirror_axes`).
MIRROR_MAX_SHARE = 0.3
MIRROR_STANDOUT = 0.5
MIRROR_RATIO = 0.35
MIRROR_MIN_DETAIL = 2.0
#: Turns :func:`tilt` reports: below the smallest, the image's own hashes are within a few
#: bits of the reference's; beyond the largest, the corners cut off take most of the
#: middle crop.
TILT_MIN_DEGREES = 1.5
TILT_MAX_DEGREES = 30.0
#: How far (in lines of the intermediate) an uncovered corner's edge may stray from a
#: straight line, and the shortest edge that counts (lines).
TILT_FIT_TOLERANCE = 1.5
TILT_MIN_LINES = 8
#: The colour signature is measured on the image shrunk to about this many pixels a side.
COLOUR_SIDE = 32
#: Added to each channel's mean (0-255) before the chromaticity is taken, so that the
#: colour of a dark image, where a few levels swing the ratios, counts as nearly grey.
#: Measured (benchmarks/bench_near_duplicate.py, calibration seed): with 32, a +-20 level
#: colour shift moves the signature by at most 0.14 (99 % within 0.09), against 0.41
#: with no offset.
COLOUR_DARK_OFFSET = 32.0
#: An image whose pixels' saturation (max - min of the channels, 0-255) averages below
#: this has too little colour for :func:`saturated_colour` (JPEG's chroma noise on a grey
#: picture is a few levels).
SATURATED_MIN_MEAN = 8.0
#: Side of the luminance thumbnail compared by :func:`thumbnail_correlation` (box filter,
#: in floating point: no 8-bit rounding). Measured on the corpora of
#: benchmarks/bench_near_duplicate.py (docs/near-duplicates.md): at 16, with the plane
#: removed, smooth photographs that are not copies correlate less than at 8 or 12.
LUMA_SIDE = 16


def _plane_basis(side: int) -> np.ndarray:
    """An orthonormal basis ``(3, side * side)`` of the planes ``a + b x + c y``."""
    y, x = np.mgrid[:side, :side].astype(np.float64)
    basis, _ = np.linalg.qr(np.stack([np.ones(side * side), x.ravel(), y.ravel()], axis=1))
    return basis.T


#: The planes (brightness, gradient) of a LUMA_SIDE thumbnail, as an orthonormal basis
#: (3, LUMA_SIDE ** 2): what thumbnail details are taken off, here and in the registry.
PLANE_BASIS = _plane_basis(LUMA_SIDE)


def reference_variant_names() -> tuple[str, ...]:
    """Names of the hashes stored per reference image, in order."""
    names = ["full"]
    for scale in CROP_SCALES:
        for ay in CROP_ANCHORS:
            for ax in CROP_ANCHORS:
                names.append(f"crop{scale:.2f}@{ax:g},{ay:g}")
    return (*names, *BAND_VARIANTS)


REFERENCE_VARIANTS: tuple[str, ...] = reference_variant_names()


def reduce_for_hashing(image: Image.Image, min_side: int = INTERMEDIATE_SIDE) -> Image.Image:
    """Shrink ``image`` with ``Image.reduce`` by the largest integer factor per axis that
    keeps each side at least ``min_side`` pixels (images already small are returned as
    they are). Any mode; the result has the same mode. Hashing passes a greyscale image:
    reducing one channel instead of three is what makes the fast path fast."""
    fx = max(1, image.width // min_side)
    fy = max(1, image.height // min_side)
    if fx == 1 and fy == 1:
        return image
    if image.mode not in ("RGB", "L", "RGBA", "LA", "I", "F"):
        image = image.convert("RGB")
    return image.reduce((fx, fy))


#: Pillow's fixed-point precision for 8-bit resampling (``PRECISION_BITS`` in its
#: ``libImaging/Resample.c``): each coefficient is an integer in units of 2**-22.
_RESAMPLE_BITS = 22


def _lanczos_weight(x: float) -> float:
    """Pillow's Lanczos filter (support 3) at ``x``, with its own arithmetic."""
    if not -3.0 <= x < 3.0:
        return 0.0

    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v = v * math.pi
        return math.sin(v) / v

    return sinc(x) * sinc(x / 3)


@functools.lru_cache(maxsize=256)
def _lanczos_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's integer coefficients for a Lanczos resize of a line of ``in_size`` pixels
    to ``out_size``, as an ``(out_size, in_size)`` ``float64`` matrix: its
    ``precompute_coeffs`` (each output pixel's window and weights, normalised to sum to
    1) and ``normalize_coeffs_8bpc`` (each weight rounded half away from zero to units of
    2**-22), in the same double-precision steps."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 3.0 * stretch
    matrix = np.zeros((out_size, in_size))
    for out in range(out_size):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        count = min(int(centre + support + 0.5), in_size) - first
        weights = [_lanczos_weight((x + first - centre + 0.5) * (1.0 / stretch)) for x in range(count)]
        total = 0.0
        for w in weights:
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        matrix[out, first: first + count] = [
            int(w * (1 << _RESAMPLE_BITS) + (0.5 if w >= 0 else -0.5)) for w in weights]
    matrix.setflags(write=False)
    return matrix


def _pass(pixels: np.ndarray, coefficients: np.ndarray, axis: int) -> np.ndarray:
    """One pass of Pillow's 8-bit resampling along ``axis`` (1: rows, 0: columns) of a
    ``float64`` array of whole grey levels: each output the integer sum of the inputs
    times the coefficients plus half a unit, shifted down by :data:`_RESAMPLE_BITS` and
    clipped to 0-255 (Pillow's ``clip8``). Every product and partial sum is a whole number
    far below 2**53 (255 times at most 2**23, a few hundred terms), which ``float64``
    holds exactly in any order, so one matrix product gives Pillow's integers."""
    sums = pixels @ coefficients.T if axis == 1 else coefficients @ pixels
    sums += 1 << (_RESAMPLE_BITS - 1)
    sums *= 1.0 / (1 << _RESAMPLE_BITS)  # a power of two: exact
    np.floor(sums, out=sums)
    np.maximum(sums, 0, out=sums)
    return np.minimum(sums, 255, out=sums)


def _passes(pixels: np.ndarray, size: tuple[int, int], order: tuple[int, ...]) -> np.ndarray:
    """:func:`_pass` along the axes in ``order`` that change size (Pillow skips the
    others), from a 2-D ``uint8`` array to ``size`` (width, height)."""
    out = pixels.astype(np.float64)
    for axis in order:
        old, new = out.shape[axis], size[1 - axis]
        if new != old:
            out = _pass(out, _lanczos_coefficients(old, new), axis)
    return out.astype(np.uint8)


@functools.lru_cache(maxsize=256)
def _lanczos_order(height: int, width: int, size: tuple[int, int]) -> tuple[int, ...] | None:
    """The order of the passes Pillow's Lanczos resize of a ``width`` x ``height``
    greyscale image to ``size`` makes (rows first, or columns first: Pillow 13 resizes
    the columns first when the height shrinks much more than the width), found by
    resizing a noise image both ways and with Pillow; None when neither gives Pillow's
    pixels (another Pillow's filter): :func:`lanczos` then leaves the resize to Pillow."""
    probe = np.random.default_rng(height * 100_003 + width).integers(0, 256, (height, width), dtype=np.uint8)
    want = np.asarray(Image.fromarray(probe).resize(size, Image.Resampling.LANCZOS))
    for order in ((1, 0), (0, 1)):
        if np.array_equal(_passes(probe, size, order), want):
            return order
    return None


#: How many times a pair of sizes is resized by Pillow before :func:`lanczos` sets up its
#: matrix products for it: the coefficients and the probe cost as much as several
#: resizes, which a folder of images of many sizes would pay for nothing (measured on 200
#: photographs of as many sizes: 6.2 ms of query hashes each, against 4.5 with Pillow).
_SETUP_AFTER = 2
_SEEN: dict[tuple[int, int, tuple[int, int]], int] = {}


def _fast_order(height: int, width: int, size: tuple[int, int]) -> tuple[int, ...] | None:
    """:func:`_lanczos_order` once a pair of sizes has been resized :data:`_SETUP_AFTER`
    times, else None (Pillow resizes it)."""
    key = (height, width, size)
    seen = _SEEN.get(key, 0)
    if seen < _SETUP_AFTER:
        if len(_SEEN) > 65536:
            _SEEN.clear()
        _SEEN[key] = seen + 1
        return None
    return _lanczos_order(height, width, size)


def _resized(pixels: np.ndarray, size: tuple[int, int], order: tuple[int, ...] | None) -> np.ndarray:
    """``pixels`` resized to ``size``: by the matrix products in ``order``, or by Pillow."""
    if order is None:
        return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(size, Image.Resampling.LANCZOS))
    return _passes(pixels, size, order)


def lanczos(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``Image.resize(size, Image.Resampling.LANCZOS)`` of a greyscale image given as a
    2-D ``uint8`` array: the same pixels, as an array, from two matrix products with
    Pillow's own integer coefficients instead of its loops (a 128 px image to 32x32 in
    about a third of the time). Which pass Pillow makes first is found once per pair of
    sizes (:func:`_lanczos_order`), after the first few resizes of those sizes, which
    Pillow makes (:data:`_SETUP_AFTER`); ``tests/test_hashing.py`` checks the pixels
    against Pillow's on hundreds of sizes, shrinking and enlarging."""
    size = tuple(size)
    return _resized(pixels, size, _fast_order(pixels.shape[0], pixels.shape[1], size))


def hash_value(h: imagehash.ImageHash) -> np.uint64:
    """An imagehash 64-bit hash as one ``uint64`` (imagehash's bit order)."""
    bits = np.asarray(h.hash, dtype=bool).reshape(-1)
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash, got {bits.size} bits")
    return _pack64(bits[None])[0]


def _pack64(bits: np.ndarray) -> np.ndarray:
    """Each row of an ``(n, 64)`` bool array as one ``uint64`` (imagehash's bit order)."""
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def hash_hex(value: int | np.integer) -> str:
    """imagehash's hex string of a ``uint64`` hash value."""
    return f"{int(value):016x}"


def hashing_gray(image: Image.Image) -> Image.Image:
    """The shared hashing intermediate: ``image`` in greyscale (imagehash's own ``"L"``
    conversion), then reduced by :func:`reduce_for_hashing`."""
    return reduce_for_hashing(image if image.mode == "L" else image.convert("L"))


def phash(image: Image.Image) -> imagehash.ImageHash:
    """``imagehash.phash(image)`` after a greyscale-then-reduce step: same algorithm, about
    3x faster on a 512x512 image, bits within a mean of < 2 of imagehash's own."""
    return imagehash.phash(hashing_gray(image))


def dhash(image: Image.Image) -> imagehash.ImageHash:
    """``imagehash.dhash(image)`` after the same greyscale-then-reduce step."""
    return imagehash.dhash(hashing_gray(image))


def colour_signature(image: Image.Image) -> np.ndarray:
    """The chromaticity of the image's mean colour: ``(r, g, b)`` shares of the mean
    (each channel's mean plus :data:`COLOUR_DARK_OFFSET`, over their sum), a ``float32``
    array summing to 1; grey is ``(1/3, 1/3, 1/3)``.

    Brightness, contrast, JPEG, resizing, crops and mirroring barely move it; a picture of
    another colour does. Computed on the image reduced to about :data:`COLOUR_SIDE`
    pixels a side (the mean of a box-filtered image is the image's mean).
    """
    return _mean_colour(_colour_small(image))


def _colour_small(image: Image.Image) -> Image.Image:
    """The image in RGB, reduced to about :data:`COLOUR_SIDE` pixels a side (a box
    filter): what both colour signatures are measured on."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    factor = max(1, min(rgb.width, rgb.height) // COLOUR_SIDE)
    return rgb.reduce(factor) if factor > 1 else rgb


def _mean_colour(small: Image.Image) -> np.ndarray:
    # ImageStat.Stat(small).mean, from the same histogram without its Python loop over the
    # bins: integer sums, so the same floats.
    counts = np.asarray(small.histogram(), dtype=np.int64).reshape(3, 256)
    means = (counts @ np.arange(256, dtype=np.int64)) / counts.sum(axis=1) + COLOUR_DARK_OFFSET
    return (means / means.sum()).astype(np.float32)


def saturated_colour(image: Image.Image) -> np.ndarray | None:
    """The chromaticity of the image's coloured parts: like :func:`colour_signature`, the
    ``(r, g, b)`` shares of a mean colour, but of each pixel weighted by the square of its
    saturation (max - min of its channels), so grey, white and black parts count for
    nothing and the most strongly coloured for most. ``None`` when the image has too
    little colour for it to mean anything (:data:`SATURATED_MIN_MEAN`).

    A plain ground takes most of an image of one object, and pulls the image's mean colour
    towards its own: a purple and a red circle on the same grey ground are 0.06 apart by
    :func:`colour_signature`, 0.26 by this. Copies keep it: JPEG, blur, resizing, crops up
    to 20 %, borders, flips and turns, a white caption move it by at most 0.05; brightness
    and contrast (x0.7 / x1.3) and a +-20 level colour shift by at most 0.11, allowing for a
    contrast change of 1.2 (docs/near-duplicates.md, "The colour of the coloured parts").
    """
    return _saturated_colour(_colour_small(image))


def _saturated_colour(small: Image.Image) -> np.ndarray | None:
    pixels = np.asarray(small, dtype=np.float32).reshape(-1, 3)
    r, g, b = pixels.T  # per channel: numpy's max and min along an axis of 3 take 5x longer
    saturation = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    if float(saturation.sum()) < SATURATED_MIN_MEAN * len(saturation):
        return None
    weights = saturation * saturation
    means = (weights @ pixels).astype(np.float64) / float(weights.sum()) + COLOUR_DARK_OFFSET
    return (means / means.sum()).astype(np.float32)


def colour_distance(a: np.ndarray, b: np.ndarray, contrast: float = 1.0) -> np.ndarray:
    """Distance between colour signatures: the largest difference of a channel's share
    (broadcasting over leading axes; 0 for the same colour, at most 1).

    With ``contrast`` > 1, a contrast change of up to that factor either way is allowed
    for: a contrast change (Pillow's ``ImageEnhance.Contrast``, a levels or curves
    adjustment) moves each channel's mean towards or away from the grey of the image's
    luminance, which scales the signature's difference from grey, ``a - 1/3``, by about
    the contrast factor. The distance is then the smallest, over scales ``s`` within
    ``[1/contrast, contrast]``, of the largest difference between ``s * (a - 1/3)`` and
    ``b - 1/3``: a pair that differs only by such a scale is at distance 0, another hue
    still far.
    """
    a, b = _centred(a), _centred(b)
    if a.shape == b.shape == (3,):  # one pair (the search compares one at a time)
        return centred_colour_distance(a.tolist(), b.tolist(), contrast)
    if contrast <= 1.0:
        return np.abs(a - b).max(axis=-1).astype(np.float32)
    a, b = np.broadcast_arrays(a, b)
    # max_i |s a_i - b_i| is convex and piecewise linear in s: its minimum over the
    # interval is at an end or where two of its pieces cross (s a_i - b_i = +-(s a_j - b_j),
    # i = j included), so those scales, kept within the interval, are the candidates.
    lo, hi = 1.0 / contrast, float(contrast)
    pairs = a.shape[-1] ** 2  # not -1: an empty stack (no reference) must reshape too
    with np.errstate(divide="ignore", invalid="ignore"):
        crossings = np.concatenate([
            ((b[..., :, None] - b[..., None, :]) / (a[..., :, None] - a[..., None, :])).reshape(*a.shape[:-1], pairs),
            ((b[..., :, None] + b[..., None, :]) / (a[..., :, None] + a[..., None, :])).reshape(*a.shape[:-1], pairs),
        ], axis=-1)
    crossings = np.clip(np.where(np.isfinite(crossings), crossings, lo), lo, hi)
    ends = np.broadcast_to(np.array([lo, hi]), (*a.shape[:-1], 2))
    scales = np.concatenate([ends, crossings], axis=-1)[..., None]  # (..., candidates, 1)
    apart = np.abs(scales * a[..., None, :] - b[..., None, :]).max(axis=-1)
    return apart.min(axis=-1).astype(np.float32)


def _centred(colour: Any) -> np.ndarray:
    """Colour signatures as :func:`colour_distance` compares them: each channel's share
    less grey's (1/3), in ``float64``."""
    return np.asarray(colour, dtype=np.float64) - 1 / 3


def centred_colour(colour: Any) -> list[float]:
    """A colour signature's channels less grey's, in Python floats: what
    :func:`centred_colour_distance` takes (a caller comparing one signature with many
    centres each once)."""
    return _centred(colour).tolist()


def centred_colour_distance(a: Sequence[float], b: Sequence[float], contrast: float = 1.0) -> np.float32:
    """:func:`colour_distance` of one pair of 3-channel signatures given centred
    (:func:`centred_colour`), the same value, in Python floats: the search compares pairs
    one at a time, and numpy's overhead per call makes the array form several times
    slower for one pair."""
    if contrast <= 1.0:
        return np.float32(max(abs(x - y) for x, y in zip(a, b)))
    return np.float32(_contrast_distance(a, b, contrast))


def _contrast_distance(a: Sequence[float], b: Sequence[float], contrast: float) -> float:
    """:func:`colour_distance` of one pair of 3-channel signatures with a contrast
    allowance, in Python floats: the same candidate scales (each distinct one once: the
    crossing of channels i and j is that of j and i, and a channel with itself gives lo
    or b_i / a_i) and the same double-precision operations as the array form, which
    numpy's overhead per call makes several times slower for one pair."""
    lo, hi = 1.0 / contrast, float(contrast)
    a0, a1, a2 = a
    b0, b1, b2 = b
    scales = [lo, hi]
    for num, den in ((b0 + b0, a0 + a0), (b1 + b1, a1 + a1), (b2 + b2, a2 + a2),
                     (b0 - b1, a0 - a1), (b0 - b2, a0 - a2), (b1 - b2, a1 - a2),
                     (b0 + b1, a0 + a1), (b0 + b2, a0 + a2), (b1 + b2, a1 + a2)):
        if den != 0.0:  # else inf or nan, which the array form replaces by lo
            scale = num / den
            scales.append(lo if scale < lo else hi if scale > hi else scale)
    best = math.inf
    for scale in scales:
        apart = abs(scale * a0 - b0)
        apart = max(apart, abs(scale * a1 - b1), abs(scale * a2 - b2))
        if apart < best:
            best = apart
    return best


def luma_thumbnail(image: Image.Image) -> np.ndarray:
    """The image's luminance shrunk to ``LUMA_SIDE x LUMA_SIDE`` (box filter, floating
    point), as a ``float32`` array. Any mode; colour images are converted to ``"L"``
    first (imagehash's conversion), so the hashing intermediate and a stored RGB thumbnail
    give the same values up to the thumbnail's JPEG error."""
    gray = image if image.mode == "L" else image.convert("L")
    return np.asarray(gray.convert("F").resize((LUMA_SIDE, LUMA_SIDE), Image.Resampling.BOX), dtype=np.float32)


def thumbnail_detail(luma: np.ndarray) -> np.ndarray:
    """A :func:`luma_thumbnail` without its best-fitting plane (brightness, gradient),
    flattened and scaled to unit length (zeros for a thumbnail that is a plane: no detail
    to compare); broadcasts over leading axes. The dot product of two is their
    :func:`thumbnail_correlation`: search keeps these, one per reference."""
    v = np.asarray(luma, dtype=np.float64).reshape(*np.shape(luma)[:-2], -1)
    v = v - (v @ PLANE_BASIS.T) @ PLANE_BASIS
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norm > 1e-3, v / np.maximum(norm, 1e-12), 0.0)


def thumbnail_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How alike two :func:`luma_thumbnail` arrays are, whatever brightness and contrast
    separate them: the correlation (-1 to 1) of what is left of each after removing its
    best-fitting plane ``a + b x + c y`` (broadcasting over leading axes).

    A brightness or contrast change maps grey levels affinely, which the plane (the mean)
    and the normalisation absorb, so a copy correlates near 1 even when its hash bits,
    which hang on small differences in a smooth picture, have moved. Removing the plane,
    not only the mean, keeps two different smooth pictures that share a gradient (two
    skies) from correlating on that gradient alone. A thumbnail that is a plane has no
    detail left and correlates 0 with anything.
    """
    return (thumbnail_detail(a) * thumbnail_detail(b)).sum(axis=-1).astype(np.float32)


def hash_quality(gray: Image.Image | np.ndarray) -> int:
    """PDQ-style quality, 0-100: the mean absolute gradient of a 64x64 luminance image
    (``gray`` an image, or greyscale pixels as a 2-D ``uint8`` array).

    PDQ (Meta's perceptual hash) computes the same score on its 64x64 buffer: flat or
    nearly flat images have DCT coefficients so close to their median that noise decides
    the bits. See :data:`MIN_RELIABLE_QUALITY` for the cut-off.
    """
    if isinstance(gray, Image.Image):
        gray = np.asarray(gray if gray.mode == "L" else gray.convert("L"))
    if gray.shape != (QUALITY_SIDE, QUALITY_SIDE):
        gray = lanczos(gray, (QUALITY_SIDE, QUALITY_SIDE))
    pixels = gray.astype(np.int32)
    # PDQ: each neighbour difference scaled to 0..100 and truncated, summed over both
    # directions, divided by 90, capped at 100.
    total = 0
    for axis in (0, 1):
        total += int((np.abs(np.diff(pixels, axis=axis)) * 100 // 255).sum())
    return min(100, total // 90)


@dataclass(frozen=True)
class ImageHashes:
    """The perceptual hashes of one image: one row per variant, one column per hash.

    ``variants`` names each row (``"full"``, ``"mirror"``, ``"crop0.90@0,0.5"``,
    ``"band-top"``...), ``values`` is a ``(len(variants), len(COLUMNS))`` ``uint64`` array
    (:data:`ALGORITHMS`, then :data:`EQUALISED`), ``quality``
    the PDQ-style quality (0-100) of the image, ``colour`` its
    :func:`colour_signature` and ``luma`` its :func:`luma_thumbnail` (None when not taken).
    """

    variants: tuple[str, ...]
    values: np.ndarray
    quality: int
    colour: np.ndarray
    scheme: str = HASH_SCHEME
    luma: np.ndarray | None = None
    #: Luminance thumbnails of variants cut out of the image (:data:`TRIMMED`,
    #: :data:`STRAIGHTENED`): what a match of that variant is correlated with, instead of ``luma``.
    variant_luma: dict[str, np.ndarray] = field(default_factory=dict)
    #: The part of a reference a cut-out variant faces, as fractions of its sides
    #: ``(left, top, right, bottom)`` (:data:`STRAIGHTENED`: the middle crop): the
    #: reference's thumbnail is cut the same way before the correlation. Absent: all of it.
    variant_box: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    #: The angle :func:`tilt` read off the image's corners (degrees, anticlockwise), when
    #: it has the :data:`STRAIGHTENED` variant.
    tilt: float | None = None
    #: :func:`saturated_colour` of the image (None: too little colour, or not taken).
    saturated: np.ndarray | None = None
    #: The colours of a variant cut out of the image (:data:`TRIMMED`: the picture inside
    #: its border), ``(colour signature, saturated colour)``: what a match of that variant
    #: is compared with, instead of ``colour`` and ``saturated``.
    variant_colour: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    def colours_of(self, variant: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(colour signature, saturated colour)`` a match of ``variant`` is judged on: the
        variant's own (:attr:`variant_colour`), else the image's."""
        return self.variant_colour.get(variant, (self.colour, self.saturated))

    def __getitem__(self, algorithm: str) -> np.ndarray:
        """The ``uint64`` hashes of one column (an algorithm or :data:`EQUALISED`), one per
        variant."""
        return self.values[:, COLUMNS.index(algorithm)]

    @property
    def reliable(self) -> bool:
        """Whether the image has enough detail for its hash to be evidence."""
        return self.quality >= MIN_RELIABLE_QUALITY

    def as_dict(self) -> dict[str, Any]:
        """JSON form: algorithm -> {variant: imagehash hex string}, plus quality."""
        out: dict[str, Any] = {"scheme": self.scheme, "quality": self.quality,
                               "colour": [round(float(c), 4) for c in self.colour]}
        if self.tilt is not None:
            out["tilt"] = round(self.tilt, 2)
        if self.saturated is not None:
            out["saturated_colour"] = [round(float(c), 4) for c in self.saturated]
        for name, (colour, saturated) in self.variant_colour.items():
            out[f"{name}_colour"] = [round(float(c), 4) for c in colour]
            if saturated is not None:
                out[f"{name}_saturated_colour"] = [round(float(c), 4) for c in saturated]
        for j, algorithm in enumerate(COLUMNS):
            out[algorithm] = {v: hash_hex(self.values[i, j]) for i, v in enumerate(self.variants)}
        return out


def _equalise(pixels: np.ndarray) -> np.ndarray:
    """``ImageOps.equalize`` of a 2-D ``uint8`` array, with numpy instead of a Python loop
    over the 256 grey levels: the same integer lookup table (Pillow's formula, step =
    (pixels - those of the last level) // 255), so the same pixels
    (``tests/test_hashing.py`` checks it on flat, near-flat, noisy and smooth images)."""
    counts = np.bincount(pixels.ravel(), minlength=256)
    used = counts[counts > 0]
    step = (int(used.sum()) - int(used[-1])) // 255 if len(used) > 1 else 0
    if not step:
        return pixels.copy()
    lut = (step // 2 + np.concatenate(([0], np.cumsum(counts)[:-1]))) // step
    return np.clip(lut, 0, 255).astype(np.uint8)[pixels]


def _phash_stack(pixels: np.ndarray) -> np.ndarray:
    """``imagehash.phash`` of each 32x32 ``uint8`` image of an ``(n, 32, 32)`` stack, as
    ``uint64`` values, from one stacked DCT instead of n calls: the same scipy DCTs along
    the same axes, the same median of the 8x8 low frequencies, so the same bits
    (``tests/test_hashing.py`` checks it against imagehash, flat images included, where
    rounding decides the bits). A query's eight pHashes take about a quarter of the time."""
    import scipy.fftpack  # what imagehash.phash uses

    low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)[:, :8, :8].reshape(len(pixels), 64)
    return _pack64(low > np.median(low, axis=1)[:, None])


def _dhash_stack(strips: np.ndarray) -> np.ndarray:
    """``imagehash.dhash`` of each 9x8 ``uint8`` image of an ``(n, 8, 9)`` stack, as
    ``uint64`` values: the same comparison of each pixel with its left neighbour, for the
    whole stack at once (imagehash's own resize of an input already 9x8 is a copy).
    ``tests/test_hashing.py`` checks the bits against imagehash."""
    return _pack64((strips[:, :, 1:] > strips[:, :, :-1]).reshape(len(strips), DHASH_SIZE * DHASH_SIZE))


def _rows(inputs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rows of :data:`COLUMNS`, ``(len(inputs), 3)`` ``uint64``, for several
    :func:`_hash_inputs` pairs at once: their plain and equalised pHashes in one
    :func:`_phash_stack`, their dHashes in one :func:`_dhash_stack` (resizing the inputs
    again, as imagehash would, is a no-op)."""
    small = np.stack([s for s, _ in inputs])
    strips = np.stack([strip for _, strip in inputs])
    values = _phash_stack(np.concatenate([small, np.stack([_equalise(a) for a in small])]))
    n = len(inputs)
    return np.stack([values[:n], _dhash_stack(strips), values[n:]], axis=1)


def _hash_inputs(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two resized images imagehash itself would hash, of greyscale pixels (a 2-D
    ``uint8`` array): pHash's 32x32 input and dHash's 9x8 one, the same Lanczos resizes
    ``imagehash.phash``/``dhash`` make (:func:`lanczos`), so hashing them gives exactly
    imagehash's hashes of the image. When Pillow makes both resizes rows first, their row
    passes are one matrix product."""
    small, strip = (EQUALISED_SIDE, EQUALISED_SIDE), (DHASH_SIZE + 1, DHASH_SIZE)
    height, width = pixels.shape
    small_order, strip_order = _fast_order(height, width, small), _fast_order(height, width, strip)
    if not (small_order == strip_order == (1, 0) and width > EQUALISED_SIDE):  # else Pillow skips the 32 px row pass
        return _resized(pixels, small, small_order), _resized(pixels, strip, strip_order)
    rows = _pass(pixels.astype(np.float64), _row_coefficients(width), 1)
    return (_passes(rows[:, :EQUALISED_SIDE], small, (0,)),
            _passes(rows[:, EQUALISED_SIDE:], strip, (0,)))


@functools.lru_cache(maxsize=64)
def _row_coefficients(width: int) -> np.ndarray:
    """The row coefficients of pHash's and dHash's inputs stacked, for one matrix product."""
    return np.concatenate([_lanczos_coefficients(width, EQUALISED_SIDE), _lanczos_coefficients(width, DHASH_SIZE + 1)])


#: The :data:`TURNED_VARIANTS` that keep the axes, on a 2-D array: they commute with
#: Pillow's symmetric Lanczos resize, so they turn an image's hash inputs as they are.
_FLIPPED = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
    Image.Transpose.FLIP_TOP_BOTTOM: lambda a: a[::-1],
    Image.Transpose.ROTATE_180: lambda a: a[::-1, ::-1],
}
#: Every one of the :data:`TURNED_VARIANTS` on a 2-D array, as ``Image.transpose`` moves
#: the pixels (its ROTATE_90 turns anticlockwise, as ``numpy.rot90`` does): views, the
#: values as they are.
TURNED_ARRAYS = {**_FLIPPED, Image.Transpose.ROTATE_90: lambda a: np.rot90(a, 1),
                 Image.Transpose.ROTATE_270: lambda a: np.rot90(a, -1)}


def _turned(pixels: np.ndarray, whole: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The hash inputs of the image turned over, in :data:`TURNED_VARIANTS` order. A flip
    or half turn comes from the image's own inputs ``whole`` (:data:`_FLIPPED`), so the
    turned image need not be resized again. A quarter turn swaps the axes of dHash's 9x8
    input, so the anticlockwise one is resized from the turned intermediate ``pixels``
    (``Image.transpose``'s ROTATE_90 turns anticlockwise, as ``numpy.rot90`` does), and the
    clockwise one is its half turn (``tests/test_hashing.py`` checks the rows against
    hashing the turned image)."""
    def flipped(inputs: tuple[np.ndarray, np.ndarray], method: Image.Transpose) -> tuple[np.ndarray, np.ndarray]:
        small, strip = (np.ascontiguousarray(_FLIPPED[method](a)) for a in inputs)
        return small, strip

    quarter = _hash_inputs(np.rot90(pixels, 1))
    quarters = {Image.Transpose.ROTATE_90: quarter,
                Image.Transpose.ROTATE_270: flipped(quarter, Image.Transpose.ROTATE_180)}
    return [quarters[method] if method in quarters else flipped(whole, method)
            for method in TURNED_VARIANTS.values()]


def border_box(gray: Image.Image) -> tuple[int, int, int, int] | None:
    """The box ``(left, top, right, bottom)`` of the picture inside a border of a
    greyscale image (the hashing intermediate), flat or mirroring the picture, or None
    when it has none.

    From each edge inward, the lines (rows for the top and bottom, columns for the left
    and right) whose every pixel is within :data:`BORDER_TOLERANCE` grey levels of the
    outermost line's mid-grey (that line spanning at most twice as many levels) are
    border. A side counts when they make at least :data:`BORDER_MIN_SHARE` of the height
    (or width), so that a picture's own dark edge row is left alone, and when they end in
    a straight edge: most of the first (or second) line inside differs from the border;
    or, past a JPEG's ringing, most of the line :data:`BORDER_EDGE_LINES` further in does,
    the edge being the largest step between neighbouring lines' medians; or the opposite
    side has a border of the same colour that ends in one (a picture's dark edge may
    blend with a black bar where the opposite edge does not). A picture on a flat
    background usually has no such edge (the line just inside the background touches its
    subject at a few pixels), so it is not cut to its subject. The line the picture starts
    in is cut off too: shrinking the image blends it with the border. A side with no flat
    border may have one that mirrors the picture (padding by reflection), cut at its axis
    (:func:`_mirror_axes`). None as well when what is left would be under
    :data:`BORDER_MIN_PICTURE` of a side."""
    pixels = np.asarray(gray, dtype=np.int16)
    height, width = pixels.shape
    # Each line's darkest and lightest pixel: rows for the top and bottom, columns for the sides.
    rows = (pixels.min(axis=1), pixels.max(axis=1))
    columns = (pixels.min(axis=0), pixels.max(axis=0))
    per_side = (pixels.T, pixels, pixels.T[::-1], pixels[::-1])  # left, top, right, bottom; outermost first
    extremes = (columns, rows, (columns[0][::-1], columns[1][::-1]), (rows[0][::-1], rows[1][::-1]))

    def flat_outside(low: np.ndarray, high: np.ndarray) -> bool:
        """Whether a side's outermost line spans at most twice :data:`BORDER_TOLERANCE`."""
        return int(high[0]) - int(low[0]) <= 2 * BORDER_TOLERANCE

    def run(lines: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[int, int, bool]:
        """Where the border of ``lines`` (the outermost first; ``low``/``high`` their
        darkest and lightest pixels) ends: the first line of the picture (0: no border),
        the border's colour, and whether it ends in a straight edge. Each side is searched
        over half the image at most."""
        side = len(low)
        half = side // 2
        if not flat_outside(low, high):
            return 0, 0, False  # most images: the outermost line is not flat
        colour = (int(low[0]) + int(high[0])) // 2
        flat = (high[:half] <= colour + BORDER_TOLERANCE) & (low[:half] >= colour - BORDER_TOLERANCE)
        count = int(np.argmin(flat)) if not flat.all() else half
        if count < max(1, round(BORDER_MIN_SHARE * side)) or count + BORDER_EDGE_LINES >= half:
            return 0, 0, False
        # A straight edge: most of the first line inside, or of the next (the first may be
        # a blend of border and picture, from the shrink), is not the border.
        inside = lines[count: count + 2]
        if 2 * int(np.count_nonzero(np.abs(inside - colour) > BORDER_TOLERANCE, axis=1).max()) >= inside.shape[1]:
            return count, colour, True
        # Or, past a JPEG's ringing around the edge, a few lines further in: the line that
        # far in is mostly picture, and the edge is the largest step between neighbouring
        # lines' medians (from the last flat line on).
        if abs(_medians(lines[count + BORDER_EDGE_LINES]) - colour) <= BORDER_TOLERANCE:
            return count, colour, False  # a picture on a flat background
        medians = _medians(lines[count - 1: count + BORDER_EDGE_LINES + 1])
        return count + int(np.argmax(np.abs(np.diff(medians)))), colour, True

    sides = [run(per_side[k], *extremes[k]) for k in range(4)]
    cut = []
    for k, (count, colour, edge) in enumerate(sides):
        other, other_colour, other_edge = sides[(k + 2) % 4]  # left <-> right, top <-> bottom
        if count and not edge and not (other and other_edge and abs(other_colour - colour) <= BORDER_TOLERANCE):
            count = 0
        cut.append(count + 1 if count else 0)  # the line the picture starts in may blend with the border
    # With no flat border, the sides may mirror the picture (a flat outermost line has
    # nothing to mirror): cut at the axis, the picture's own lines on both sides of it.
    # (Beside a flat border, a periodic background, which mirrors itself anywhere, would
    # be cut: the letterbox around a striped picture.)
    if not any(cut):
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k in range(4):
            if not flat_outside(*extremes[k]):
                by_shape.setdefault(per_side[k].shape, []).append(k)
        for group in by_shape.values():
            for k, axis in zip(group, _mirror_axes([per_side[k] for k in group])):
                cut[k] = axis
    if not any(cut):
        return None
    box = (cut[0], cut[1], width - cut[2], height - cut[3])
    if box[2] - box[0] < BORDER_MIN_PICTURE * width or box[3] - box[1] < BORDER_MIN_PICTURE * height:
        return None
    return box


def _mirror_axes(sides: Sequence[np.ndarray]) -> list[int]:
    """Where a border that mirrors the picture (padding by reflection) ends on each of
    ``sides``, line arrays ``(n, m)`` of one shape, outermost line first: the picture's
    first line, or 0. Measured on every fourth pixel along the lines, as root mean square
    differences, for all the sides at once. The outermost two lines are matched against
    each line pair that a mirror axis from :data:`BORDER_MIN_SHARE` to
    :data:`MIRROR_MAX_SHARE` of the side would put opposite them (the edge line kept once
    or twice); the best axis must stand out, its pairs differing by at most
    :data:`MIRROR_STANDOUT` of the mean over all axes. Then its whole border must differ
    from the reversed lines it faces by at most :data:`MIRROR_RATIO` of how much it
    differs from them unreversed, with at least :data:`MIRROR_MIN_DETAIL` grey levels of
    difference unreversed (a flat or periodic background mirrors itself anywhere)."""
    n = len(sides[0])
    low, high = max(2, round(BORDER_MIN_SHARE * n)), int(MIRROR_MAX_SHARE * n)
    if high < low:
        return [0] * len(sides)
    sample = np.stack([lines[: 2 * high + 1, ::4] for lines in sides]).astype(np.float32)
    # Squared distances of lines 0 and 1 of each side to its lines from 2*low - 2 on, as
    # |a|^2 + |b|^2 - 2 a.b (one small matrix product): for the axis low + i, the "once"
    # pairs are at j = 2i + 2 (line 0) and 2i + 1 (line 1), the "twice" pairs (the edge
    # line repeated) at 2i + 1 and 2i.
    norms = np.einsum("slm,slm->sl", sample, sample)
    reach = sample[:, 2 * low - 2:]
    distance = norms[:, :2, None] + norms[:, None, 2 * low - 2:] - 2 * (sample[:, :2] @ reach.transpose(0, 2, 1))
    once = distance[:, 0, 2::2] + distance[:, 1, 1:-1:2]
    twice = distance[:, 0, 1:-1:2] + distance[:, 1, 0:-2:2]
    both = np.minimum(once, twice)
    best = both.argmin(axis=1)
    rows = np.arange(len(sides))
    standing = both[rows, best] <= MIRROR_STANDOUT ** 2 * both.mean(axis=1)
    repeated = twice[rows, best] < once[rows, best]
    axes = []
    for side, i, stands, again in zip(sample, best.tolist(), standing.tolist(), repeated.tolist()):
        axis = low + i
        if not stands:  # most images: no axis stands out
            axes.append(0)
            continue
        border = side[:axis]
        facing = side[axis + 1 - again: 2 * axis + 1 - again]
        mirrored, unreversed = border - facing[::-1], border - facing
        mirrored, unreversed = float(np.vdot(mirrored, mirrored)), float(np.vdot(unreversed, unreversed))
        axes.append(axis if unreversed >= MIRROR_MIN_DETAIL ** 2 * border.size
                    and mirrored <= MIRROR_RATIO ** 2 * unreversed else 0)
    return axes


def tilt(gray: Image.Image) -> float | None:
    """The angle in degrees (anticlockwise positive, as ``Image.rotate`` takes it) by which
    a greyscale image (the hashing intermediate) looks turned with its size kept, or None.

    Turning a picture by a few degrees in its own frame uncovers a triangle at each corner,
    filled with one colour; each side of the frame then holds the long edge of one
    triangle, at the same end of every side going round the frame: from the corner
    towards the middle, the fill reaches in by a depth that falls in a straight line with
    slope tan(angle). The four corner pixels must share a colour, at least three sides
    must show such an edge (within :data:`TILT_FIT_TOLERANCE` lines of a straight line
    fitted to it, refitted without its outliers; a dark picture next to the fill hides
    one) at the same end, with slopes within 0.03 of their median, and no more than one
    at the other end. None for angles outside :data:`TILT_MIN_DEGREES` to
    :data:`TILT_MAX_DEGREES`."""
    pixels = np.asarray(gray, dtype=np.int16)
    corners = pixels[[0, 0, -1, -1], [0, -1, -1, 0]]
    colour = int(np.median(corners))
    if int(np.abs(corners - colour).max()) > BORDER_TOLERANCE:
        return None
    # The picture reaches each side of the frame near its middle: a side flat there is a
    # flat background or border (a picture on plain ground), not a turn.
    for line in (pixels[0], pixels[:, -1], pixels[-1], pixels[:, 0]):
        middle = line[int(0.3 * len(line)): int(0.7 * len(line)) + 1]
        if int(np.count_nonzero(np.abs(middle - colour) > BORDER_TOLERANCE)) < 2:
            return None
    steepest = math.tan(math.radians(TILT_MAX_DEGREES))
    slopes: tuple[list[float], list[float]] = ([], [])  # edges at the start / the end of a side
    # Round the frame clockwise: the top left to right, the right side top to bottom, the
    # bottom right to left, the left side bottom to top; each as lines, the outermost first.
    for lines in (pixels, pixels[:, ::-1].T, pixels[::-1, ::-1], pixels[::-1, :].T):
        cap = lines.shape[0] // 2
        near = np.abs(lines[:cap] - colour) <= BORDER_TOLERANCE
        depth = np.where(near.all(axis=0), cap, np.argmin(near, axis=0)).astype(np.float64)
        half = lines.shape[1] // 2
        for end, profile in enumerate((depth[:half], depth[::-1][:half])):
            slope = _corner_edge(profile, cap)
            if slope is not None and slope <= steepest:
                slopes[end].append(slope)
    end = 0 if len(slopes[0]) >= len(slopes[1]) else 1
    found = np.array(slopes[end])
    if len(found) < 3 or len(slopes[1 - end]) > 1:
        return None
    agree = found[np.abs(found - np.median(found)) <= 0.03]
    if len(agree) < 3:
        return None
    angle = math.degrees(math.atan(float(agree.mean())))
    if not TILT_MIN_DEGREES <= angle <= TILT_MAX_DEGREES:
        return None
    return angle if end == 0 else -angle


def _tilted(gray: Image.Image, size: tuple[int, int]) -> tuple[float, Image.Image] | None:
    """:func:`tilt` of an image of ``size`` from its hashing intermediate ``gray``, and the
    greyscale it was read on. The intermediate is reduced by a whole factor per axis, so
    its proportions may differ from the image's (1024 x 768 becomes 128 x 128), and a turn
    is a turn only in the image's own proportions: when its corners share a colour (the
    first thing a turn needs), it is resized to them first."""
    corners = [int(gray.getpixel(xy)) for xy in ((0, 0), (gray.width - 1, 0), (0, gray.height - 1),
                                                  (gray.width - 1, gray.height - 1))]
    if max(corners) - min(corners) > 2 * BORDER_TOLERANCE:
        return None
    width, height = size
    scale = max(gray.width / width, gray.height / height)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    if shape != gray.size:
        gray = gray.resize(shape, Image.Resampling.BILINEAR)
    angle = tilt(gray)
    return None if angle is None else (angle, gray)


def _corner_edge(depth: np.ndarray, cap: int) -> float | None:
    """The slope with which the fill's depth falls along one side from a corner (``depth``
    per position, the corner first, ``cap`` where it reaches half the image), or None when
    it does not fall in a straight line: the run of positions the fill reaches from the
    corner, fitted by a line, refitted twice without the positions more than
    :data:`TILT_FIT_TOLERANCE` from it (the steep edge of the next corner's triangle, a
    dark picture beside the fill), at least 70 % of the run kept."""
    filled = depth > 0
    run = int(np.argmin(filled)) if not filled.all() else len(depth)
    if run < TILT_MIN_LINES:
        return None
    x = np.arange(run, dtype=np.float64)
    y = depth[:run]
    use = y < cap
    slope = 0.0
    for _ in range(2):
        if int(use.sum()) < TILT_MIN_LINES:
            return None
        xs, ys = x[use], y[use]
        dx = xs - xs.mean()
        slope = float(dx @ (ys - ys.mean()) / (dx @ dx))  # least squares, as np.polyfit(xs, ys, 1)
        intercept = float(ys.mean()) - slope * float(xs.mean())
        use = (np.abs(y - (slope * x + intercept)) <= TILT_FIT_TOLERANCE) & (y < cap)
    if int(use.sum()) < max(TILT_MIN_LINES, 0.7 * run) or slope >= 0:
        return None
    return -float(slope)


def straightened(gray: Image.Image, angle: float) -> tuple[Image.Image, Image.Image, tuple[float, float, float, float]]:
    """A greyscale image turned back by ``angle`` (:func:`tilt`): cut to the middle
    ``CROP_SCALES[-1]`` of each side as :func:`reference_hashes` cuts its centred crop,
    the corners the turn had cut off (and the pixels blended with them) filled with the
    mean grey of the rest, to hash; the largest centred box no larger than that which
    holds none of those corners, to correlate; and that box as fractions of the sides."""
    back = np.asarray(gray.rotate(-angle, Image.Resampling.BILINEAR), dtype=np.float32)
    frame = Image.new("L", gray.size, 255)
    kept = np.asarray(frame.rotate(angle, Image.Resampling.BILINEAR).rotate(-angle, Image.Resampling.BILINEAR)) == 255
    filled = Image.fromarray(np.round(np.where(kept, back, np.float32(back[kept].mean()) if kept.any() else 0))
                             .astype(np.uint8))
    middle = box = crop_box(gray.size, CROP_SCALES[-1])
    scale = CROP_SCALES[-1]
    while scale > 0.5 and not kept[box[1]:box[3], box[0]:box[2]].all():
        scale -= 0.01
        box = crop_box(gray.size, scale)
    width, height = gray.size
    fractions = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
    return filled.crop(middle), filled.crop(box), fractions


def _medians(lines: np.ndarray) -> np.ndarray:
    """``np.median(lines, axis=-1)`` of integer lines, the same values, without
    ``np.median``'s overhead per call (most of :func:`border_box`'s time otherwise)."""
    n = lines.shape[-1]
    k = n // 2
    if n % 2:
        return np.partition(lines, k, axis=-1)[..., k].astype(np.float64)
    middle = np.partition(lines, (k - 1, k), axis=-1)
    return (middle[..., k - 1].astype(np.float64) + middle[..., k]) / 2


def _band_inputs(pixels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hash inputs of :data:`BAND_VARIANTS`: the top and the bottom band of the image
    (greyscale pixels, a 2-D ``uint8`` array)."""
    side = max(1, round(pixels.shape[0] * (1 - BAND_GAP) / 2))
    return [_hash_inputs(pixels[:side]), _hash_inputs(pixels[pixels.shape[0] - side:])]


def query_hashes(image: Image.Image) -> ImageHashes:
    """Hashes of an image to check (``QUERY_VARIANTS``): the image, the image turned over
    (its mirror image, flipped top to bottom, rotated by 180° and by a quarter turn either
    way) and its top and bottom bands, with its quality, colour signature and luminance
    thumbnail; for an image with a flat border or one that mirrors the picture, the
    picture inside it (:data:`TRIMMED`, with its own thumbnail); and for an image turned by
    a few degrees in its own frame (:func:`tilt`), the picture turned back
    (:data:`STRAIGHTENED`, with its own thumbnail and the box it faces on a reference).

    Matching the turned variants against the registry catches flipped and turned
    copies without storing turned references; the bands catch copies with a caption
    across them; the trimmed picture, copies put in a mount or a letterbox or padded by
    reflection; the straightened picture, copies turned by a few degrees.
    """
    return query_hashes_many([image])[0]


def query_hashes_many(images: Sequence[Image.Image]) -> list[ImageHashes]:
    """:func:`query_hashes` of each image, the same values, with the pHashes and dHashes
    of every image's variants computed together (the audit hashes a chunk at a time)."""
    grays = [hashing_gray(image) for image in images]
    inputs: list[tuple[Image.Image, Image.Image]] = []
    # Per image: its variants' names and everything else its ImageHashes holds but the
    # hash rows, which are computed for the whole chunk at once below.
    per_image: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for image, gray in zip(images, grays):
        pixels = np.asarray(gray)
        whole = _hash_inputs(pixels)
        inputs += [whole, *_turned(pixels, whole), *_band_inputs(pixels)]
        # Variants cut out of the image (the picture inside a border, the straightened
        # picture), what each one's thumbnail is taken of, its box on the reference, and
        # its own colours.
        cut: dict[str, Image.Image] = {}
        compared: dict[str, Image.Image] = {}
        boxes: dict[str, tuple[float, float, float, float]] = {}
        colours: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        box = border_box(gray)
        if box is not None:
            cut[TRIMMED] = compared[TRIMMED] = gray.crop(box)
            # Its colours, without the border's (a white mount pulls the mean towards grey).
            sx, sy = image.width / gray.width, image.height / gray.height
            inside = _colour_small(image.crop((round(box[0] * sx), round(box[1] * sy),
                                               round(box[2] * sx), round(box[3] * sy))))
            colours[TRIMMED] = (_mean_colour(inside), _saturated_colour(inside))
        angle = None
        turned = _tilted(gray, image.size)
        if turned is not None:
            angle, proportioned = turned
            cut[STRAIGHTENED], compared[STRAIGHTENED], boxes[STRAIGHTENED] = straightened(proportioned, angle)
        inputs += [_hash_inputs(np.asarray(picture)) for picture in cut.values()]
        small = _colour_small(image)
        per_image.append(((*QUERY_VARIANTS, *cut), {
            "quality": hash_quality(pixels), "colour": _mean_colour(small), "luma": luma_thumbnail(gray),
            "variant_luma": {name: luma_thumbnail(picture) for name, picture in compared.items()},
            "variant_box": boxes, "tilt": angle, "saturated": _saturated_colour(small), "variant_colour": colours}))
    if not inputs:
        return []
    rows = _rows(inputs)
    out: list[ImageHashes] = []
    start = 0
    for variants, fields in per_image:
        out.append(ImageHashes(variants, rows[start: start + len(variants)], **fields))
        start += len(variants)
    return out


def reference_hashes(image: Image.Image) -> ImageHashes:
    """Hashes of a reference image (``REFERENCE_VARIANTS``): the whole image, crops of it
    and its top and bottom bands.

    A copy that was cropped by 5-10 % lands within a few bits of one of the crops, where
    the full image's hash would be 10-20 bits away.
    """
    gray = hashing_gray(image)
    pixels = np.asarray(gray)
    inputs = [_hash_inputs(pixels)]
    for scale in CROP_SCALES:
        for ay in CROP_ANCHORS:
            for ax in CROP_ANCHORS:
                left, top, right, bottom = crop_box(gray.size, scale, ax, ay)
                inputs.append(_hash_inputs(pixels[top:bottom, left:right]))
    return ImageHashes(REFERENCE_VARIANTS, _rows(inputs + _band_inputs(pixels)), hash_quality(pixels),
                       colour_signature(image), luma=luma_thumbnail(gray))


def crop_box(size: tuple[int, int], scale: float, ax: float = 0.5, ay: float = 0.5) -> tuple[int, int, int, int]:
    """The box of a crop keeping ``scale`` of each side of an image of ``size``, placed by
    the anchors (0 left/top, 1 right/bottom): a reference's stored crops, and the middle
    crop a straightened query is cut to so that it faces the centred one."""
    width, height = size
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = round((width - cw) * ax), round((height - ch) * ay)
    return left, top, left + cw, top + ch


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance between ``uint64`` hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def hamming_within(table: np.ndarray, queries: Sequence[int] | np.ndarray, max_distance: int,
                   *, chunk: int = 1 << 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, row) pair with Hamming distance ``<= max_distance``.

    ``table`` is a 1-D ``uint64`` array (a memory map is fine), ``queries`` a few hashes.
    The table is scanned once, in cache-sized chunks shared by all queries, with
    preallocated buffers (numpy XOR + ``bitwise_count``), so the temporaries never leave
    the cache. Returns ``(query_index, row, distance)`` arrays.
    """
    qs = np.asarray(queries, dtype=np.uint64).reshape(-1)
    n = int(table.shape[0])
    if n == 0 or qs.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.uint8)
    size = min(chunk, n)
    xor = np.empty(size, dtype=np.uint64)
    count = np.empty(size, dtype=np.uint8)
    mask = np.empty(size, dtype=bool)
    found_q: list[np.ndarray] = []
    found_r: list[np.ndarray] = []
    found_d: list[np.ndarray] = []
    for start in range(0, n, size):
        block = table[start:start + size]
        m = block.shape[0]
        for qi, q in enumerate(qs):
            np.bitwise_xor(block, q, out=xor[:m])
            np.bitwise_count(xor[:m], out=count[:m])
            np.less_equal(count[:m], max_distance, out=mask[:m])
            if not mask[:m].any():  # the usual case, and cheaper than flatnonzero's scan
                continue
            hits = np.flatnonzero(mask[:m])
            if hits.size:
                found_q.append(np.full(hits.size, qi, dtype=np.int64))
                found_r.append(hits + start)
                found_d.append(count[hits].copy())
    if not found_r:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.uint8)
    return np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_d)
