"""The reference registry: copyrighted training images, by perceptual hash.

A registry is one SQLite file (stdlib ``sqlite3``, WAL journal) holding, per reference
image: its sha256, source path, licence and source text, size, hash quality, a small JPEG
thumbnail (so a report can show the reference beside an output even after the original has
moved), its colour signature (the chromaticity of its mean colour) and its perceptual
hashes (:mod:`artengine.hashing`: pHash and dHash of the image and of crops of it). The
file also records the hash scheme and the library versions that computed the hashes; a
registry built with another scheme is refused rather than searched with hashes that do not
compare. A registry of schema version 1 (before colour signatures) is upgraded in place
when opened for writing (``artengine registry upgrade``, or any ``registry add``): each
reference's colour signature is measured on its stored thumbnail. Opened read-only, it is
refused with a message saying so.

Search does not go through SQLite. The hashes are laid out as ``uint64`` columns in an
index file beside the registry (``<registry>.index``, or a user cache folder when that is
not writable), memory-mapped and scanned with numpy XOR + ``bitwise_count``. SQLite
triggers bump a generation counter on every change to the references or hashes, whoever
makes it; an index whose header does not name the registry's id and current generation, or
whose size does not match its header, is rebuilt.

Fail-closed: a missing, empty (0 bytes or no references), corrupt, foreign or
version-incompatible registry raises :class:`RegistryError` naming the file. It never
searches as "no match".
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import functools
import hashlib
import io
import json
import os
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version as _dist_version
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .errors import ArtengineError, ImageLoadError
from .hashing import (
    ALGORITHMS,
    BAND_VARIANTS,
    COLUMNS,
    CONFIRMED_VARIANTS,
    EQUALISED,
    HASH_SCHEME,
    LUMA_SIDE,
    MIN_RELIABLE_QUALITY,
    PART_ANCHORS,
    PART_REFINE,
    PART_SCALES,
    PART_VARIANTS,
    PLANE_BASIS,
    REFERENCE_VARIANTS,
    TURNED_ARRAYS,
    TURNED_VARIANTS,
    ImageHashes,
    centred_colour,
    centred_colour_distance,
    colour_distance,
    colour_signature,
    crop_box,
    hamming,
    hamming_within,
    hash_hex,
    luma_thumbnail,
    reference_hashes,
    saturated_colour,
    thumbnail_detail,
)
from .io import atomic_write_bytes, iter_image_files, open_image, sha256_file

#: Version of the SQLite layout below. Versions 1 (no colour signatures) and 2 (no band
#: hashes, no equalised pHash) are upgraded in place when opened for writing; any other
#: version is refused with a clear message.
SCHEMA_VERSION = 3
_UPGRADABLE_FROM = ("1", "2")
_PREVIOUS_HASH_SCHEME = "artengine-hashes/1"  # what schema 1 and 2 registries hold
APPLICATION_ID = 0x41524547  # "AREG": marks the SQLite file as an artengine registry
THUMBNAIL_SIDE = 128
_INDEX_MAGIC = b"ARTEIDX1"
_ALIGN = 64

_SCHEMA = f"""
PRAGMA application_id = {APPLICATION_ID};
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE refs (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    source_path TEXT NOT NULL,
    licence TEXT NOT NULL DEFAULT '',
    source_text TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    quality INTEGER NOT NULL,
    added_at TEXT NOT NULL,
    thumbnail BLOB NOT NULL,
    colour_r REAL NOT NULL,
    colour_g REAL NOT NULL,
    colour_b REAL NOT NULL
);
CREATE TABLE hashes (
    ref_id INTEGER NOT NULL REFERENCES refs(id) ON DELETE CASCADE,
    variant TEXT NOT NULL,
    {", ".join(f"{a} TEXT NOT NULL" for a in COLUMNS)},
    PRIMARY KEY (ref_id, variant)
);
"""
# Any change, by any writer (even the sqlite3 shell), moves the generation on, so a stale
# index is always noticed.
_TRIGGERS = "".join(
    f"CREATE TRIGGER bump_{table}_{op.lower()} AFTER {op} ON {table} BEGIN "
    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;\n"
    for table in ("refs", "hashes") for op in ("INSERT", "UPDATE", "DELETE")
)
# A change other than references added above the highest id (an edit, a delete, a row put
# in below the top) also moves ``rewrites`` on: an index made before one is built again
# from every row; one made before references were only added takes the new rows alone
# (:meth:`ReferenceRegistry._extended`).
_REWRITE_TRIGGERS = "".join(
    f"CREATE TRIGGER IF NOT EXISTS rewrite_{table}_{op.lower()} AFTER {op} ON {table} {when}BEGIN "
    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rewrites'; END;\n"
    for table, key in (("refs", "NEW.id"), ("hashes", "NEW.ref_id"))
    for op, when in (("UPDATE", ""), ("DELETE", ""), ("INSERT", f"WHEN {key} < (SELECT MAX(id) FROM refs) "))
)


class RegistryError(ArtengineError):
    """A registry file is missing, empty, corrupt, foreign or incompatible. Names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"registry {self.path}: {problem}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose output the registry stores."""
    out = {}
    for dist in ("artengine", "imagehash", "pillow", "numpy", "scipy"):
        try:
            out[dist] = _dist_version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


@dataclass(frozen=True)
class Reference:
    """One reference image as the registry knows it."""

    id: int
    sha256: str
    source_path: str
    licence: str
    source_text: str
    width: int
    height: int
    quality: int
    added_at: str
    thumbnail: bytes  # JPEG
    colour: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # colour signature (r, g, b)

    def thumbnail_uri(self) -> str:
        """The thumbnail as a ``data:image/jpeg;base64,...`` URI (for reports)."""
        return "data:image/jpeg;base64," + base64.b64encode(self.thumbnail).decode("ascii")


@dataclass(frozen=True)
class Match:
    """A reference found near a query image."""

    registry: str
    reference: Reference
    distances: dict[str, int]  # algorithm -> Hamming distance
    query_variant: str  # "full", a turned variant ("mirror", "flip", "rotate90"...) or a band
    reference_variant: str  # "full", a crop name, or a part found by ReferenceRegistry.part_correlation
    colour_distance: float = 0.0  # between the colour signatures (hashing.colour_distance)
    equalised_distance: int = 0  # between the equalised pHashes (hashing.EQUALISED)
    image_distance_sum: int | None = None  # band matches: pHash + dHash of the nearest whole-image pair
    correlation: float | None = None  # whole-image pairs: of the luminance thumbnails (hashing.thumbnail_correlation)
    saturated_distance: float | None = None  # between the colours of the coloured parts (hashing.saturated_colour)

    @property
    def distance(self) -> int:
        """The pHash distance (the figure a reviewer compares with imagededup's)."""
        return self.distances["phash"]

    def as_dict(self) -> dict[str, Any]:
        """JSON form for reports (no thumbnail bytes)."""
        r = self.reference
        return {"registry": self.registry, "sha256": r.sha256, "source": r.source_path,
                "licence": r.licence, "source_text": r.source_text,
                "algorithm": "+".join(ALGORITHMS), "distance": self.distance,
                "distances": dict(self.distances), "distance_sum": sum(self.distances.values()),
                "colour_distance": round(float(self.colour_distance), 4),
                "equalised_distance": self.equalised_distance,
                "image_distance_sum": self.image_distance_sum,
                "correlation": None if self.correlation is None else round(float(self.correlation), 4),
                "saturated_colour_distance": (None if self.saturated_distance is None
                                              else round(float(self.saturated_distance), 4)),
                "mirrored": self.query_variant == "mirror", "query_variant": self.query_variant,
                "reference_variant": self.reference_variant, "reference_quality": r.quality}


@dataclass
class AddSummary:
    """What ``ReferenceRegistry.add`` did."""

    added: int = 0
    unchanged: int = 0  # already in the registry (same sha256)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    low_quality: list[str] = field(default_factory=list)  # added, but too flat to hash reliably


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _thumbnail(image: Image.Image) -> bytes:
    thumb = image.convert("RGB").copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _query_detail(luma: np.ndarray, variant: str, variant_luma: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """:func:`~artengine.hashing.thumbnail_detail` of an image's luminance thumbnail, as
    it faces the reference: for a match of one of the image's turned variants, turned by
    the same transposition that made the variant (:data:`~artengine.hashing.TURNED_VARIANTS`;
    a transposition moves the float values, it does not change them); for a variant cut
    out of the image (the picture inside its border), that variant's own thumbnail from
    ``variant_luma``."""
    if variant_luma and variant in variant_luma:
        return thumbnail_detail(variant_luma[variant])
    method = TURNED_VARIANTS.get(variant)
    if method is not None:
        luma = TURNED_ARRAYS[method](luma)  # the values Image.transpose moves, without an image
    return thumbnail_detail(luma)


#: (scale, horizontal anchor, vertical anchor) of every part :meth:`ReferenceRegistry.part_correlation` scans.
_PART_GRID: tuple[tuple[float, float, float], ...] = tuple(
    (scale, ax, ay) for scale in PART_SCALES for ay in PART_ANCHORS for ax in PART_ANCHORS)


def _box_cells(start: np.ndarray, end: np.ndarray, size: int, cells: int = LUMA_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """For each line segment (pixels ``start`` to ``end``, arrays of the same shape ``S``,
    of a line of ``size``): the first and the last-plus-one pixel of each of ``cells``
    cells that Pillow's BOX resize averages over when it shrinks the segment, ``S + (cells,)``
    arrays (its ``precompute_coeffs``: the pixels from ``int(centre - support + 0.5)`` up
    to ``int(centre + support + 0.5)`` whose offset from the cell's centre, over the
    scale, is within (-0.5, 0.5])."""
    start, end = np.asarray(start, np.float64)[..., None], np.asarray(end, np.float64)[..., None]
    scale = (end - start) / cells
    stretch = np.maximum(scale, 1.0)
    centre = start + (np.arange(cells) + 0.5) * scale
    first = np.maximum((centre - 0.5 * stretch + 0.5).astype(np.int64), 0)
    last = np.minimum((centre + 0.5 * stretch + 0.5).astype(np.int64), size)
    span = first[..., None] + np.arange(int((last - first).max()))
    t = (span - centre[..., None] + 0.5) / stretch[..., None]
    inside = (t > -0.5) & (t <= 0.5) & (span < last[..., None])
    lo = np.take_along_axis(span, inside.argmax(-1)[..., None], -1)[..., 0]
    return lo, lo + inside.sum(-1)


def _part_cells(width: int, height: int, parts: Sequence[tuple[float, float, float]]) -> tuple[np.ndarray, ...]:
    """Where the 16x16 cells of ``parts`` (scale, anchors) of a ``width`` x ``height``
    thumbnail lie in its summed-area table (:func:`_part_details`): the flat offsets of
    their four corners (bottom right, top right, bottom left, top left) and their areas,
    each ``(parts, 16, 16)``; or, where the cells tile every part, the offsets of the
    corners they share and their areas."""
    boxes = np.array([crop_box((width, height), *part) for part in parts])
    y0, y1 = _box_cells(boxes[:, 1], boxes[:, 3], height)
    x0, x1 = _box_cells(boxes[:, 0], boxes[:, 2], width)
    if np.array_equal(y1[:, :-1], y0[:, 1:]) and np.array_equal(x1[:, :-1], x0[:, 1:]):
        # The cells tile each part (a part shrunk, not enlarged): the 17x17 corners
        # they share, ``(parts, 17, 17)``, a quarter of the four corners of each cell.
        ys, xs = np.concatenate([y0, y1[:, -1:]], axis=1), np.concatenate([x0, x1[:, -1:]], axis=1)
        area = np.diff(ys)[:, :, None] * np.diff(xs)[:, None, :]
        return ys[:, :, None] * (width + 1) + xs[:, None, :], area.astype(np.float64)  # float: a fast division
    y0, y1, x0, x1 = y0[:, :, None], y1[:, :, None], x0[:, None, :], x1[:, None, :]
    top, bottom = y0 * (width + 1), y1 * (width + 1)
    return bottom + x1, top + x1, bottom + x0, top + x0, ((y1 - y0) * (x1 - x0)).astype(np.float64)


@functools.lru_cache(maxsize=16)
def _grid_cells(width: int, height: int) -> tuple[np.ndarray, ...]:
    """:func:`_part_cells` of every part of :data:`_PART_GRID` (thumbnails of a registry
    come in few sizes)."""
    return _part_cells(width, height, _PART_GRID)


@functools.lru_cache(maxsize=1024)
def _near_cells(width: int, height: int, k: int) -> tuple[tuple[tuple[float, float, float], ...], tuple[np.ndarray, ...]]:
    """The neighbours of part ``k`` of :data:`_PART_GRID` at half its steps
    (:data:`~artengine.hashing.PART_REFINE`: scale, anchors), and their :func:`_part_cells`."""
    d_scale, d_anchor = PART_REFINE
    part = scale0, ax0, ay0 = _PART_GRID[k]
    near = tuple((scale, ax, ay) for scale in (scale0 - d_scale, scale0, scale0 + d_scale)
                 for ay in (ay0 - d_anchor, ay0, ay0 + d_anchor) for ax in (ax0 - d_anchor, ax0, ax0 + d_anchor)
                 if (scale, ax, ay) != part and 0 <= ax <= 1 and 0 <= ay <= 1)
    return near, _part_cells(width, height, near)


def _part_details(integral: np.ndarray, cells: tuple[np.ndarray, ...]) -> np.ndarray:
    """Thumbnail details of parts of a reference's stored thumbnail, from the summed-area
    table ``integral`` of its luminance (``(height + 1, width + 1)``) and the parts'
    :func:`_part_cells`: each part's 16x16 cell means, the values Pillow's BOX resize of
    the part gives (:func:`~artengine.hashing.luma_thumbnail`) up to float32 rounding, in
    a few array operations for all the parts instead of one resize each."""
    return thumbnail_detail(_cell_means(integral, cells))


def _cell_means(integral: np.ndarray, cells: tuple[np.ndarray, ...]) -> np.ndarray:
    """The parts' 16x16 cell means, ``(parts, 16, 16)``, from the summed-area table and
    :func:`_part_cells` (either form: the same sums, in the same order)."""
    # In place where it can be: arrays of this size come fresh from the system each time,
    # and touching new pages cost more than the arithmetic.
    flat = integral.ravel()
    if len(cells) == 2:
        corners, area = cells
        grid = flat.take(corners)
        sums = np.subtract(grid[:, 1:, 1:], grid[:, :-1, 1:])
        sums -= grid[:, 1:, :-1]
        sums += grid[:, :-1, :-1]
    else:
        bottom_right, top_right, bottom_left, top_left, area = cells
        sums = flat.take(bottom_right)
        sums -= flat.take(top_right)
        sums -= flat.take(bottom_left)
        sums += flat.take(top_left)
    sums /= area
    return sums


def _part_norms(integral: np.ndarray, cells: tuple[np.ndarray, ...]) -> np.ndarray:
    """The length of each part's cell means once their plane (brightness, gradient) is
    taken off: the square root of their squared length (their mean taken off) less the
    squares of their dot products with the planes' basis. What a part's thumbnail detail
    is divided by (:func:`~artengine.hashing.thumbnail_detail`), and a property of the
    reference alone: an open registry keeps it with the summed-area table."""
    means = _cell_means(integral, cells)
    means = means.reshape(len(means), -1)
    means -= means.mean(axis=1, keepdims=True)  # the constant plane: fewer digits to cancel below
    dots = means @ PLANE_BASIS.T
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", means, means) - np.einsum("ij,ij->i", dots, dots), 0.0))


def _corner_weights(cells: tuple[np.ndarray, ...], detail: np.ndarray) -> np.ndarray:
    """For cells that tile their parts (:func:`_part_cells`' two-array form): the weights
    of the 17x17 corners' values in the summed-area table, ``(parts, 289)``, whose dot
    product with those values is the parts' cell means dotted with ``detail``. A cell's
    sum is its four corners with signs, so each corner takes the ``detail / area`` of the
    up to four cells it is a corner of. They depend on the image and the thumbnails' size,
    not on the reference: made once per image for every reference of that size."""
    corners, area = cells
    cell = detail.reshape(LUMA_SIDE, LUMA_SIDE) / area
    weights = np.zeros(corners.shape)
    weights[:, 1:, 1:] += cell
    weights[:, :-1, 1:] -= cell
    weights[:, 1:, :-1] -= cell
    weights[:, :-1, :-1] += cell
    return weights.reshape(len(weights), -1)


def _part_scores(integral: np.ndarray, cells: tuple[np.ndarray, ...], detail: np.ndarray,
                 norms: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """``_part_details(integral, cells) @ detail`` for an image's thumbnail detail (a unit
    vector with no plane in it, :func:`~artengine.hashing.thumbnail_detail`), without
    making the parts' details: a part's plane has a dot product of 0 with ``detail``, so
    each score is the part's cell means dotted with ``detail``, over the part's
    :func:`_part_norms` (pass them where they are kept). Where the cells tile the parts,
    that dot product is the corners' values in the table dotted with their
    :func:`_corner_weights` (pass them where they are kept): one gather and one product
    per part, no cell made. :func:`_part_scores_of` for one table."""
    return _part_scores_of([integral], cells, detail,
                           [_part_norms(integral, cells) if norms is None else norms], weights)[0]


def _part_scores_of(integrals: Sequence[np.ndarray], cells: tuple[np.ndarray, ...], detail: np.ndarray,
                    norms: Sequence[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """:func:`_part_scores` of several references' summed-area tables of one size, with
    their norms: ``(len(integrals), parts)``. Where the cells tile the parts, one gather
    of every table's corners and one product for all of them (each row summed as for one
    table alone)."""
    if len(cells) == 2:
        if weights is None:
            weights = _corner_weights(cells, detail)
        stacked = np.stack([integral.ravel() for integral in integrals])
        values = stacked.take(cells[0].ravel(), axis=1).reshape(len(integrals), len(weights), -1)
        dots = np.einsum("rij,ij->ri", values, weights)
    else:
        dots = np.stack([_cell_means(integral, cells).reshape(len(n), -1) @ detail
                         for integral, n in zip(integrals, norms)])
    kept = np.stack(norms)
    return np.where(kept > 1e-3, dots / np.maximum(kept, 1e-12), 0.0)


class _PartTable:
    """What an open registry keeps of a reference for the part test: the summed-area table
    of its thumbnail's luminance, the :func:`_part_norms` of the part grid, and those of
    the neighbours of the grid's parts looked at more closely (by the part's index)."""

    __slots__ = ("integral", "norms", "near")

    def __init__(self, integral: np.ndarray, norms: np.ndarray) -> None:
        self.integral, self.norms = integral, norms
        self.near: dict[int, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        return self.integral.nbytes + self.norms.nbytes + sum(n.nbytes for n in self.near.values())


class _KeptBySize:
    """Values by reference id, the most recently used last, up to a number of bytes in all
    (each value's ``nbytes``; the last one kept whatever its size)."""

    def __init__(self) -> None:
        self._values: OrderedDict[int, Any] = OrderedDict()
        self.nbytes = 0

    def get(self, key: int) -> Any:
        """The value kept for ``key`` (now the most recently used), or None."""
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: int, value: Any, limit: int) -> Any:
        """Keep ``value`` for ``key`` (replacing any), then let the least recently used go
        while the values come to more than ``limit`` bytes."""
        kept = self._values.pop(key, None)
        if kept is not None:
            self.nbytes -= kept.nbytes
        self._values[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > limit and len(self._values) > 1:
            self.nbytes -= self._values.popitem(last=False)[1].nbytes
        return value

    def grew(self, key: int, value: Any, nbytes: int) -> None:
        """Count ``nbytes`` more for ``value``, which has grown by them, if it is kept."""
        if self._values.get(key) is value:
            self.nbytes += nbytes


@functools.lru_cache(maxsize=128)
def _query_weights(detail: bytes, width: int, height: int, k: int | None) -> np.ndarray | None:
    """The :func:`_corner_weights` of an image's thumbnail detail (its bytes) for the part
    grid of a ``width`` x ``height`` thumbnail (``k`` None) or the neighbours of its part
    ``k``; None where the cells do not tile the parts. Made once per image and size; the
    last 128 kept (a search of the demo's registry made 13 on average, 57 at most: two
    details, the grid and the parts looked at more closely; 0.23 MB for a grid, 60 KB for
    a part's neighbours)."""
    cells = _grid_cells(width, height) if k is None else _near_cells(width, height, k)[1]
    if len(cells) != 2:
        return None
    return _corner_weights(cells, np.frombuffer(detail, dtype=np.float64))


class ReferenceRegistry:
    """A reference registry file: add images, describe it, and search it.

    ``ReferenceRegistry(path)`` opens an existing registry read-only and validates it;
    ``ReferenceRegistry(path, create=True)`` creates it if needed and opens it for writing.
    Safe to search from several threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        self.writable = create
        self._lock = threading.RLock()
        self._index: _Index | None = None
        self._forget_measures()
        self._conn = self._connect(create)
        try:
            self._meta = self._check()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ opening

    def _connect(self, create: bool) -> sqlite3.Connection:
        where = self.path
        if not create:
            if not where.exists():
                raise RegistryError(where, "no such file")
            if where.is_dir():
                raise RegistryError(where, "is a folder, not a registry file")
            if where.stat().st_size == 0:
                raise RegistryError(where, "empty file (0 bytes), not a registry")
        elif where.exists() and where.is_dir():
            raise RegistryError(where, "is a folder, not a registry file")
        try:
            if create:
                if not where.parent.exists():
                    raise RegistryError(where, f"folder {where.parent} does not exist")
                conn = sqlite3.connect(where, check_same_thread=False)
            else:
                conn = sqlite3.connect(f"{where.resolve().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            if create:
                if not conn.execute("SELECT name FROM sqlite_master").fetchall():
                    conn.executescript("PRAGMA journal_mode = WAL;\n" + _SCHEMA + _TRIGGERS)
                    self._init_meta(conn)
        except sqlite3.DatabaseError as exc:
            raise RegistryError(where, f"not a readable registry (SQLite: {exc})") from None
        return conn

    @staticmethod
    def _init_meta(conn: sqlite3.Connection) -> None:
        meta = {
            "format": "artengine-registry",
            "schema_version": str(SCHEMA_VERSION),
            "hash_scheme": HASH_SCHEME,
            "algorithms": ",".join(COLUMNS),
            "variants": json.dumps(list(REFERENCE_VARIANTS)),
            "uuid": uuid.uuid4().hex,
            "generation": "0",
            "created_at": _utcnow(),
            "versions": json.dumps(library_versions(), sort_keys=True),
        }
        with conn:
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())

    def _check(self) -> dict[str, str]:
        """Validate the file: an artengine registry, our schema and hash scheme, intact."""
        try:
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if app_id != APPLICATION_ID or not {"meta", "refs", "hashes"} <= tables:
                raise RegistryError(self.path, "not an artengine reference registry "
                                    "(create one with `artengine registry add`)")
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise RegistryError(self.path, f"corrupt registry (SQLite: {exc})") from None
        if meta.get("schema_version") in _UPGRADABLE_FROM and meta.get("hash_scheme") == _PREVIOUS_HASH_SCHEME:
            if not self.writable:
                what = "before colour signatures" if meta["schema_version"] == "1" else "before band hashes"
                raise RegistryError(self.path, f"registry schema version {meta['schema_version']!r} ({what}), "
                                    f"this artengine reads version {SCHEMA_VERSION}; upgrade it "
                                    f"in place with `artengine registry upgrade {self.path}`")
            if meta["schema_version"] == "1":
                self._upgrade_from_v1()
            self._upgrade_from_v2()
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise RegistryError(self.path, f"registry schema version {meta.get('schema_version')!r}, "
                                f"this artengine reads version {SCHEMA_VERSION}; rebuild it with "
                                "`artengine registry add`")
        if meta.get("hash_scheme") != HASH_SCHEME or meta.get("algorithms") != ",".join(COLUMNS):
            raise RegistryError(self.path, f"hashes were computed with scheme {meta.get('hash_scheme')!r}, "
                                f"this artengine uses {HASH_SCHEME!r}; rebuild it with "
                                "`artengine registry add`")
        if not meta.get("uuid") or not str(meta.get("generation", "")).isdigit():
            raise RegistryError(self.path, "corrupt registry: metadata is incomplete")
        if self.writable and "rewrites" not in meta:  # a new registry, or one made before it was kept
            try:
                with self._lock, self._conn:
                    self._conn.executescript(_REWRITE_TRIGGERS)
                    self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('rewrites', '0')")
            except sqlite3.DatabaseError as exc:
                raise RegistryError(self.path, f"cannot add the rewrite triggers (SQLite: {exc})") from None
        return meta

    def _upgrade_from_v1(self) -> None:
        """Schema 1 -> 2, in one transaction: add the colour signature of every reference,
        measured on its stored thumbnail (the original may have moved)."""
        try:
            with self._lock, self._conn:
                for channel in "rgb":
                    self._conn.execute(f"ALTER TABLE refs ADD COLUMN colour_{channel} REAL NOT NULL DEFAULT 0")
                rows = self._conn.execute("SELECT id, thumbnail FROM refs").fetchall()
                for ref_id, thumbnail in rows:
                    colour = colour_signature(self._thumbnail_image(thumbnail, ref_id))
                    self._conn.execute("UPDATE refs SET colour_r = ?, colour_g = ?, colour_b = ? WHERE id = ?",
                                       (*(float(c) for c in colour), ref_id))
                self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [
                    ("schema_version", "2"),
                    ("upgraded", json.dumps({"from_schema": 1, "at": _utcnow(),
                                             "colour_signatures": "measured on thumbnails"})),
                ])
        except sqlite3.DatabaseError as exc:
            raise RegistryError(self.path, f"cannot upgrade from schema version 1 (SQLite: {exc})") from None

    def _upgrade_from_v2(self) -> None:
        """Schema 2 -> 3, in one transaction: add the equalised pHash of every stored
        variant and the band hashes of every reference. They are computed from the
        reference's source file when it is still there unchanged (same sha256), else from
        its stored thumbnail (128 pixels, the size hashing reduces to anyway). The stored
        pHash and dHash are kept as they are."""
        sources = {"source file": 0, "thumbnail": 0}
        try:
            with self._lock, self._conn:
                self._conn.execute(f"ALTER TABLE hashes ADD COLUMN {EQUALISED} TEXT NOT NULL DEFAULT ''")
                refs = self._conn.execute("SELECT id, sha256, source_path, thumbnail FROM refs").fetchall()
                for ref_id, digest, source_path, thumbnail in refs:
                    image, origin = self._upgrade_image(digest, source_path, thumbnail, ref_id)
                    sources[origin] += 1
                    hashes = reference_hashes(image)
                    stored = {v for (v,) in self._conn.execute("SELECT variant FROM hashes WHERE ref_id = ?",
                                                                  (ref_id,))}
                    for i, variant in enumerate(hashes.variants):
                        row = [hash_hex(v) for v in hashes.values[i]]
                        if variant in stored:
                            self._conn.execute(f"UPDATE hashes SET {EQUALISED} = ? WHERE ref_id = ? AND variant = ?",
                                               (row[COLUMNS.index(EQUALISED)], ref_id, variant))
                        else:
                            self._conn.execute(f"INSERT INTO hashes (ref_id, variant, {', '.join(COLUMNS)}) "
                                               f"VALUES (?, ?, {', '.join('?' for _ in COLUMNS)})",
                                               (ref_id, variant, *row))
                self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("hash_scheme", HASH_SCHEME),
                    ("algorithms", ",".join(COLUMNS)),
                    ("variants", json.dumps(list(REFERENCE_VARIANTS))),
                    ("upgraded_to_3", json.dumps({"from_schema": 2, "at": _utcnow(),
                                                  "new_hashes_from": sources})),
                ])
        except sqlite3.DatabaseError as exc:
            raise RegistryError(self.path, f"cannot upgrade from schema version 2 (SQLite: {exc})") from None

    def _upgrade_image(self, digest: str, source_path: str, thumbnail: bytes, ref_id: int) -> tuple[Image.Image, str]:
        """A reference's pixels for an upgrade: its source file if unchanged, else its thumbnail."""
        path = Path(source_path)
        try:
            if path.is_file() and sha256_file(path) == digest:
                return open_image(path).rgb, "source file"
        except (OSError, ImageLoadError):
            pass
        return self._thumbnail_image(thumbnail, ref_id), "thumbnail"

    def _thumbnail_image(self, thumbnail: bytes, ref_id: int) -> Image.Image:
        """A reference's stored thumbnail as an RGB image; unreadable is a corrupt registry."""
        try:
            with Image.open(io.BytesIO(thumbnail)) as thumb:
                return thumb.convert("RGB")
        except (OSError, ValueError) as exc:
            raise RegistryError(self.path, f"corrupt registry: thumbnail of reference {ref_id} cannot be "
                                f"read ({exc}); rebuild it with `artengine registry add`") from None

    def close(self) -> None:
        """Close the database and release the index map."""
        with self._lock:
            self._index = None
            self._conn.close()

    def __enter__(self) -> "ReferenceRegistry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ adding

    def add(self, paths: Iterable[str | os.PathLike[str]], *, licence: str = "", source: str = "",
            progress: Callable[[int], None] | None = None) -> AddSummary:
        """Hash reference images (files, or folders recursively) into the registry.

        Idempotent: an image whose sha256 is already present is left as it is. Unreadable
        files are skipped and listed in the summary, never a crash. ``progress`` is called
        with 1 after each file.
        """
        from threadpoolctl import threadpool_limits

        if not self.writable:
            raise RegistryError(self.path, "opened read-only")
        summary = AddSummary()
        # The hashes' resizes are small matrix products: idle OpenBLAS threads would spin
        # beside them for nothing (as much CPU again, the same wall time).
        with threadpool_limits(limits=1, user_api="blas"):
            for path in paths:
                self._add_file(Path(path), licence, source, summary)
                if progress is not None:
                    progress(1)
        return summary

    def _add_file(self, path: Path, licence: str, source: str, summary: AddSummary) -> None:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            summary.skipped.append((str(path), exc.strerror or str(exc)))
            return
        with self._lock:
            if self._conn.execute("SELECT 1 FROM refs WHERE sha256 = ?", (digest,)).fetchone():
                summary.unchanged += 1
                return
        try:
            loaded = open_image(path)
        except ImageLoadError as exc:
            summary.skipped.append((str(path), exc.reason))
            return
        self._insert(digest, str(path.resolve()), loaded.rgb, licence, source, summary)

    def add_image(self, image: Image.Image, *, source_path: str, licence: str = "", source: str = "",
                  summary: AddSummary | None = None) -> AddSummary:
        """Hash one in-memory RGB image (e.g. a procedural training sample) into the registry.

        ``source_path`` is how the image is named in reports (a reproducible id such as
        ``shapes:seed=0:index=12``); its sha256 is that of the raw RGB pixels and size, as
        there is no file. Idempotent like :meth:`add`.
        """
        if not self.writable:
            raise RegistryError(self.path, "opened read-only")
        summary = summary if summary is not None else AddSummary()
        rgb = image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode() + rgb.tobytes()).hexdigest()
        with self._lock:
            if self._conn.execute("SELECT 1 FROM refs WHERE sha256 = ?", (digest,)).fetchone():
                summary.unchanged += 1
                return summary
        self._insert(digest, source_path, rgb, licence, source, summary)
        return summary

    def _insert(self, digest: str, source_path: str, rgb: Image.Image, licence: str, source: str,
                summary: AddSummary) -> None:
        hashes = reference_hashes(rgb)
        row = (digest, source_path, licence, source, rgb.size[0], rgb.size[1],
               hashes.quality, _utcnow(), _thumbnail(rgb), *(float(c) for c in hashes.colour))
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT INTO refs (sha256, source_path, licence, source_text, width, height, quality, "
                "added_at, thumbnail, colour_r, colour_g, colour_b) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            ref_id = cur.lastrowid
            self._conn.executemany(
                f"INSERT INTO hashes (ref_id, variant, {', '.join(COLUMNS)}) "
                f"VALUES (?, ?, {', '.join('?' for _ in COLUMNS)})",
                [(ref_id, variant, *(hash_hex(v) for v in hashes.values[i]))
                 for i, variant in enumerate(hashes.variants)])
        summary.added += 1
        if not hashes.reliable:
            summary.low_quality.append(source_path)

    # ------------------------------------------------------------------ describing

    def count(self) -> int:
        """Number of reference images."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM refs").fetchone()[0])

    def generation(self) -> int:
        """The change counter: moves on with every change to references or hashes."""
        with self._lock:
            return int(self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def version(self) -> str:
        """Which state of the registry the last search used, as :func:`registry_version`
        gives it: the registry's id and the generation of the index searched (before any
        search, the current generation)."""
        with self._lock:
            generation = self._index.generation if self._index is not None else self.generation()
            return _version(self._meta["uuid"], generation)

    def info(self) -> dict[str, Any]:
        """Counts, scheme, versions and sizes, as a JSON-ready dict."""
        with self._lock:
            refs, low, licences = self._conn.execute(
                "SELECT COUNT(*), SUM(quality < ?), COUNT(DISTINCT licence) FROM refs",
                (MIN_RELIABLE_QUALITY,)).fetchone()
            n_hashes = int(self._conn.execute("SELECT COUNT(*) FROM hashes").fetchone()[0])
            by_licence = dict(self._conn.execute(
                "SELECT licence, COUNT(*) FROM refs GROUP BY licence ORDER BY COUNT(*) DESC LIMIT 20").fetchall())
        meta = self._meta
        db_bytes = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        index = self._index_path()
        return {
            "path": str(self.path),
            "format": meta.get("format"),
            "schema_version": int(meta["schema_version"]),
            "uuid": meta["uuid"],
            "generation": self.generation(),
            "created_at": meta.get("created_at"),
            "hash_scheme": meta["hash_scheme"],
            "algorithms": meta["algorithms"].split(","),
            "variants_per_reference": len(json.loads(meta.get("variants", "[]"))),
            "versions": json.loads(meta.get("versions", "{}")),
            "references": int(refs),
            "hashes": n_hashes * len(COLUMNS),
            "low_quality_references": int(low or 0),
            "licences": by_licence,
            "distinct_licences": int(licences),
            "size_bytes": db_bytes,
            "index": str(index) if index is not None else None,
        }

    def reference(self, ref_id: int) -> Reference:
        """One reference by id (cached)."""
        with self._lock:
            found = self._refs.get(ref_id)
            if found is None:
                row = self._conn.execute(
                    "SELECT id, sha256, source_path, licence, source_text, width, height, quality, "
                    "added_at, thumbnail, colour_r, colour_g, colour_b FROM refs WHERE id = ?",
                    (ref_id,)).fetchone()
                if row is None:
                    raise RegistryError(self.path, f"index names reference {ref_id}, which is gone")
                found = self._refs[ref_id] = Reference(*row[:10], colour=tuple(row[10:13]))
            return found

    def _stored(self, ref_id: int) -> tuple[bytes, int]:
        """A reference's stored thumbnail and quality, for the search's own measures: read
        without keeping its :class:`Reference` (with the thumbnail's bytes) for the
        registry's lifetime, which :meth:`reference` does for the references a match names."""
        with self._lock:
            found = self._refs.get(ref_id)
            if found is not None:
                return found.thumbnail, found.quality
            row = self._conn.execute("SELECT thumbnail, quality FROM refs WHERE id = ?", (ref_id,)).fetchone()
            if row is None:
                raise RegistryError(self.path, f"index names reference {ref_id}, which is gone")
            self._qualities[ref_id] = int(row[1])
            return row[0], int(row[1])

    def _quality(self, ref_id: int) -> int:
        """A reference's hash quality (kept per reference id met)."""
        quality = self._qualities.get(ref_id)
        return self._stored(ref_id)[1] if quality is None else quality

    def find_sha256(self, digest: str) -> Reference | None:
        """The reference whose file has this sha256, if any."""
        with self._lock:
            row = self._conn.execute("SELECT id FROM refs WHERE sha256 = ?", (digest,)).fetchone()
        return self.reference(int(row[0])) if row else None

    # ------------------------------------------------------------------ searching

    def index(self) -> "_Index":
        """The memory-mapped hash index, rebuilt first if the registry changed."""
        with self._lock:
            generation = self.generation()
            if self._index is not None and self._index.generation == generation:
                return self._index
            if generation == 0 or self.count() == 0:
                raise RegistryError(self.path, "registry has no references (add some with "
                                    "`artengine registry add`)")
            path = self._index_path()
            index = _Index.load(path, self._meta["uuid"], generation) if path is not None else None
            if index is None:  # references only added since an index we have: their rows alone
                base = self._index or (_Index.load(path, self._meta["uuid"]) if path is not None else None)
                index = self._extended(base, path, held=base is self._index) if base is not None else None
            if index is None:
                index = self._build_index()
            previous = self._index
            if previous is not None and (index.rewrites is None or index.rewrites != previous.rewrites):
                self._forget_measures()  # references edited or deleted since: measured again
            self._index = index
            self._seed(index)
            return index

    def _forget_measures(self) -> None:
        """Start (again) with nothing measured on references and kept: when the registry
        is opened, and after an edit or a delete (an id may now name another reference, a
        thumbnail may have changed). Called with the lock held."""
        self._refs: dict[int, Reference] = {}  # the references matches named
        self._qualities: dict[int, int] = {}
        # The references' thumbnail details by id, a row each, and which rows are made
        # (which references are measured, :meth:`_measure`, or taken from the index, :meth:`_seed`).
        self._details = np.zeros((0, LUMA_SIDE * LUMA_SIDE))
        self._detailed = np.zeros(0, dtype=bool)
        # Beside them, the colours of their coloured parts (NaN where a reference has too
        # little colour), for a search to compare the references it meets at once.
        self._saturated = np.zeros((0, 3))
        # The part tests' tables of the references last used (summed-area tables of their
        # thumbnails in luminance, and the parts' lengths), up to PARTS_BYTES.
        self._parts = _KeptBySize()
        # The references' thumbnails in luminance last used, up to GRAYS_BYTES: a part
        # test follows the colour bounds that decoded the thumbnail in the same search.
        self._grays = _KeptBySize()

    def search(self, hashes: ImageHashes, thresholds: dict[str, float],
               accept: Callable[[Match], bool] | None = None) -> list[Match]:
        """References near any query variant in ``hashes``; closest first, one match per
        reference. With ``accept``, a pair of variants counts only if ``accept(match)`` is
        true, and each reference's closest pair is chosen among those that count (so a
        closer pair that fails the test does not hide one that passes).

        ``thresholds`` holds the largest Hamming distance per algorithm (``"phash"``,
        ``"dhash"``: both must hold, for the same query variant and stored variant), and
        optionally ``"sum"``, the largest pHash + dHash distance, and ``"colour"``, the
        largest :func:`~artengine.hashing.colour_distance` between the image's and the
        reference's colour signatures, allowing for a contrast change of up to
        ``"colour_contrast"`` (default 1: none), and ``"saturated"``, the largest distance
        between the colours of their coloured parts (:func:`~artengine.hashing.saturated_colour`,
        the reference's measured on its stored thumbnail; not applied when either has too
        little colour), with the same allowance. With ``"close_phash"`` and
        ``"close_phash_dhash"``, a whole-image pair whose pHashes are within
        ``close_phash`` also counts with a dHash distance up to ``close_phash_dhash``,
        whatever the other bounds say (clipped highlights or shadows, from a brightness or
        contrast change, move many dHash bits and few pHash bits). With ``"correlation"``
        (at most 1; above 1: off), a whole-image pair within the pHash bound that the other
        bounds refuse counts when its luminance thumbnails correlate that well
        (:func:`~artengine.hashing.thumbnail_correlation`, the image's against the
        reference's stored thumbnail), the colour bound still applying; every whole-image
        match within the pHash bound carries its ``correlation``. A match of a
        :data:`~artengine.hashing.CONFIRMED_VARIANTS` query variant (the image flipped or
        turned by 90°, 180° or 270°, or the picture inside its border) counts only with
        ``"correlation"`` on and reached, whatever the other bounds say. With
        ``"correlation"`` on and ``"part_correlation"`` (at most 1; above 1 or absent: off),
        such a pair of the image as it stands or of its mirror image (:data:`~artengine.hashing.PART_VARIANTS`)
        that its thumbnails refuse counts when the image's thumbnail (mirrored for the
        mirror image) correlates that well with a part of the reference's
        (:meth:`part_correlation`: a copy with up to a quarter of each side cut away), if
        the image and the reference both have a hash quality of at least
        ``"part_min_quality"`` (default 0); the match then carries that correlation and
        names the part as its ``reference_variant``.

        Band variants (:data:`~artengine.hashing.BAND_VARIANTS`) are compared only with the
        same band of a reference, and only when ``thresholds`` holds ``"band_sum"`` (the
        largest pHash + dHash of the band pair) and ``"band_image_sum"`` (the largest
        pHash + dHash between the nearest whole-image variants of the same pair, a looser
        check that the rest of the picture agrees too); ``"band_min_quality"`` (default 0)
        is the lowest image quality for which bands count. Whole-image variants are never
        compared with bands.
        """
        missing = [a for a in ALGORITHMS if a not in thresholds]
        if missing:
            raise ValueError(f"thresholds missing for {missing}")
        max_colour = thresholds.get("colour")
        max_saturated = thresholds.get("saturated")
        contrast = float(thresholds.get("colour_contrast", 1.0))
        close_phash = thresholds.get("close_phash", -1)
        min_correlation = thresholds.get("correlation")
        if hashes.luma is None or (min_correlation is not None and min_correlation > 1):
            min_correlation = None
        min_part = thresholds.get("part_correlation")
        if min_correlation is None or (min_part is not None and min_part > 1):
            min_part = None
        part_min_quality = thresholds.get("part_min_quality", 0)
        band_sum = thresholds.get("band_sum")
        band_image_sum = thresholds.get("band_image_sum")
        use_bands = (band_sum is not None and band_image_sum is not None
                     and hashes.quality >= thresholds.get("band_min_quality", 0))
        index = self.index()
        band_of_code = [name if name in BAND_VARIANTS else None for name in index.variant_names]
        query_band = [v if v in BAND_VARIANTS else None for v in hashes.variants]
        whole_queries = [i for i, b in enumerate(query_band) if b is None]
        confirmed = [v in CONFIRMED_VARIANTS for v in hashes.variants]
        first, rest = ALGORITHMS[0], ALGORITHMS[1:]
        qi, rows, dist = index.pairs_within(hashes[first], query_band, use_bands,
                                            int(max(thresholds[first], close_phash)))
        # Every pair's distances by the other hashes, in one array operation each instead
        # of one element of the memory-mapped columns at a time.
        apart_by = {first: dist, **{a: np.bitwise_count(index.columns[a][rows] ^ hashes[a][qi]) for a in rest}}
        best: dict[int, Match] = {}
        pair_refs = index.ref_ids[rows]
        correlations: dict[tuple[int, str], float] = {}
        # Per reference and part variant: its best part, if it may be searched.
        parts: dict[tuple[int, str], tuple[float, str] | None] = {}
        wanted: dict[str, dict[int, None]] = {}  # per variant, the references to part-test, in the order met
        passed: list[tuple[Any, ...]] = []  # the pairs that passed every test before the part test
        query_detail: dict[str, np.ndarray] = {}  # the image's thumbnail detail, per turn
        codes = index.variants[rows]
        # What the distances (and the thumbnails' correlation, where it is clearly below
        # the bound) decide, decided for every pair at once: the loop below sees only the
        # pairs that may count (thousands fewer against a registry of look-alikes).
        kept, within_of, verify_of, confirm_of = self._pair_decisions(
            hashes, thresholds, qi, codes, pair_refs, apart_by, band_of_code, query_band, confirmed, use_bands,
            min_correlation, min_part, query_detail)
        # Per reference and the query's colours compared: the image's, or a cut-out
        # variant's own (the picture inside a border, without the border's colour). The
        # image's own against every reference of a pair looked at below, at once; then the
        # colours of the coloured parts of those within the colour bound.
        refs_kept, first_rows = np.unique(pair_refs[kept], return_index=True)
        colour_apart: dict[tuple[int, str | None], float] = dict(zip(
            ((ref_id, None) for ref_id in refs_kept.tolist()),
            colour_distance(np.asarray(hashes.colour, dtype=np.float32), index.colours[rows[kept[first_rows]]],
                            contrast).tolist()))
        saturated_apart: dict[tuple[int, str | None], float | None] = {}
        if max_saturated is not None:
            within_colour = refs_kept if max_colour is None else refs_kept[np.array(
                [colour_apart[ref_id, None] <= max_colour for ref_id in refs_kept.tolist()], dtype=bool)]
            saturated_apart.update(self._saturated_apart(within_colour, hashes.saturated, contrast))
        others = [apart_by[a][kept].tolist() for a in rest]
        for q, row, ref_id, code, d, within, verify, confirm, *other in zip(
                qi[kept].tolist(), rows[kept].tolist(), pair_refs[kept].tolist(), codes[kept].tolist(),
                dist[kept].tolist(), within_of[kept].tolist(), verify_of[kept].tolist(), confirm_of[kept].tolist(),
                *others):
            band = band_of_code[code]
            distances = {first: d, **dict(zip(rest, other))}
            variant = hashes.variants[q]
            reference_variant = index.variant_names[code]
            correlation = None
            detail = None  # set when the pair counts only if a part of the reference correlates
            if verify:  # before the colour: a dot product, where the colour comparison is not
                correlation = correlations.get((ref_id, variant))
                whole = query_detail.get(variant)
                if whole is None:
                    whole = query_detail[variant] = _query_detail(hashes.luma, variant, hashes.variant_luma)
                if correlation is None:
                    correlation = correlations[ref_id, variant] = float(
                        whole @ self._detail(ref_id, hashes.variant_box.get(variant)))
                if (not within or confirm) and correlation < min_correlation:
                    # The image as it stands may be a deeper cut of the reference: a part of
                    # the reference's thumbnail may then correlate where the whole does not.
                    # The colours are compared first: they cost far less than the parts.
                    if min_part is None or variant not in PART_VARIANTS:
                        continue
                    detail = whole
            key = (ref_id, variant if variant in hashes.variant_colour else None)
            apart = colour_apart.get(key)
            if apart is None:  # one colour signature per reference: compared once per search
                ours = np.asarray(hashes.colours_of(variant)[0], dtype=np.float32)
                apart = colour_apart[key] = float(colour_distance(ours, index.colours[row], contrast))
            if max_colour is not None and apart > max_colour:
                continue
            saturated = None
            if max_saturated is not None:
                if key not in saturated_apart:  # once per reference, as the colour
                    saturated_apart[key] = self.saturated_distance(ref_id, hashes, variant, contrast)
                saturated = saturated_apart[key]
                if saturated is not None and saturated > max_saturated:
                    continue
            if detail is not None and (ref_id, variant) not in parts and ref_id not in wanted.get(variant, ()):
                if min(hashes.quality, self._quality(ref_id)) >= part_min_quality:
                    wanted.setdefault(variant, {})[ref_id] = None
                else:
                    parts[ref_id, variant] = None
            passed.append((q, row, ref_id, band, distances, variant, reference_variant, correlation, detail,
                           apart, saturated))
        # The part tests the pairs left need, a variant's against all their references at
        # once; then those pairs decided in the order met, as if each test had been made
        # where the pair met it (the tests depend on nothing decided in between).
        for variant, refs in wanted.items():
            parts.update(zip(((ref_id, variant) for ref_id in refs),
                             self.part_correlations(list(refs), query_detail[variant])))
        for q, row, ref_id, band, distances, variant, reference_variant, correlation, detail, apart, saturated \
                in passed:
            if detail is not None:
                part = parts[ref_id, variant]
                if part is None or part[0] < min_part:
                    continue
                correlation, reference_variant = part
            image_sum = None
            if band is not None:
                image_sum = self._image_distance_sum(index, ref_id, hashes, whole_queries)
                if image_sum > band_image_sum:
                    continue
            current = best.get(ref_id)
            if current is None or _rank(distances) < _rank(current.distances):
                found = Match(str(self.path), self.reference(ref_id), distances,
                              variant, reference_variant, apart,
                              int(np.bitwise_count(index.columns[EQUALISED][row] ^ hashes[EQUALISED][q])),
                              image_sum, correlation, saturated)
                if accept is None or accept(found):
                    best[ref_id] = found
        return sorted(best.values(), key=_match_order)

    #: A whole-thumbnail correlation is taken as below the bound in :meth:`_pair_decisions`
    #: only when it is below it by more than this: the loop computes each correlation it
    #: needs again (another order of the same sum), and decides a pair that close.
    CORRELATION_MARGIN = 1e-9

    def _pair_decisions(self, hashes: ImageHashes, thresholds: Mapping[str, Any], qi: np.ndarray,
                        codes: np.ndarray, pair_refs: np.ndarray, apart_by: Mapping[str, np.ndarray],
                        band_of_code: Sequence[str | None], query_band: Sequence[str | None],
                        confirmed: Sequence[bool], use_bands: bool, min_correlation: float | None,
                        min_part: float | None, query_detail: dict[str, np.ndarray],
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`search` decides of each pair (query variant ``qi``, reference row)
        before the thumbnails, for every pair at once: the indices of the pairs it looks
        at, and, per pair, whether the distances are within the bounds (or the pHashes
        close), whether the thumbnails are to verify it (a whole-image pair within the
        pHash bound, with the correlation on) and whether they must confirm it (a
        :data:`~artengine.hashing.CONFIRMED_VARIANTS` query variant).

        A pair is passed over when it is a band against another band or a whole image, or
        a band with bands not in use; when it is neither within the bounds (and not to be
        confirmed) nor to be verified; when it is a band whose sum is too large; or when
        it counts only by its whole-thumbnail correlation, no part of the reference may be
        searched, and that correlation (one product per pair over the same details) is
        below the bound by more than :attr:`CORRELATION_MARGIN`."""
        first = ALGORITHMS[0]
        names = (None, *BAND_VARIANTS)
        band = np.array([names.index(b) for b in band_of_code])[codes]
        keep = band == np.array([names.index(b) for b in query_band])[qi]
        whole = band == 0
        if not use_bands:
            keep &= whole
        total = sum(apart_by.values())
        within = np.ones(len(qi), dtype=bool)
        for algorithm in ALGORITHMS:
            within &= apart_by[algorithm] <= thresholds[algorithm]
        if thresholds.get("sum") is not None:
            within &= total <= thresholds["sum"]
        within |= (whole & (apart_by[first] <= thresholds.get("close_phash", -1))
                   & (apart_by["dhash"] <= thresholds.get("close_phash_dhash", -1)))
        # A whole-image pair within the pHash bound may still be a copy whose other hashes
        # a brightness or contrast change moved: the thumbnails decide.
        verify = whole & (apart_by[first] <= thresholds[first]) if min_correlation is not None \
            else np.zeros(len(qi), dtype=bool)
        confirm = np.asarray(confirmed, dtype=bool)[qi]  # a flipped or turned image: the thumbnails must agree
        keep &= verify | (within & ~confirm)
        if use_bands:
            keep &= whole | (total <= thresholds["band_sum"])
        if min_correlation is not None:
            droppable = np.array([(min_part is None or v not in PART_VARIANTS) and v not in hashes.variant_box
                                  for v in hashes.variants])
            doubtful = np.flatnonzero(keep & verify & (~within | confirm) & droppable[qi])
            if len(doubtful):
                refs, ref_at = np.unique(pair_refs[doubtful], return_inverse=True)
                variants, variant_at = np.unique(qi[doubtful], return_inverse=True)
                for q in variants.tolist():
                    name = hashes.variants[q]
                    if name not in query_detail:
                        query_detail[name] = _query_detail(hashes.luma, name, hashes.variant_luma)
                theirs = self._details_of(refs)
                ours = np.stack([query_detail[hashes.variants[q]] for q in variants.tolist()])
                # Every reference met against every variant in one matrix product, then each
                # pair's entry: not a row of each per pair gathered first (the demo's searches
                # held 470 pairs of 130 references and 4 variants). A sum in another order
                # than the loop's, which the margin allows for (they differ by 1e-15 at most
                # on the demo's searches).
                approx = (theirs @ ours.T)[ref_at, variant_at]
                keep[doubtful[approx < min_correlation - self.CORRELATION_MARGIN]] = False
        return np.flatnonzero(keep), within, verify, confirm

    def _detail(self, ref_id: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """:func:`~artengine.hashing.thumbnail_detail` of a reference's stored thumbnail
        (decoded once per open registry), or of the part of it in ``box`` (fractions of
        its sides, ``(left, top, right, bottom)``: what a cut-out query variant faces;
        measured each time, as boxes differ from image to image and are rare, on its
        luminance, decoded again only once let go)."""
        if box is not None:
            gray = self._gray(ref_id)
            height, width = gray.shape
            part = Image.fromarray(gray[round(box[1] * height):round(box[3] * height),
                                        round(box[0] * width):round(box[2] * width)])
            return thumbnail_detail(luma_thumbnail(part))
        with self._lock:
            self._measured(ref_id)
            return self._details[ref_id]

    def _details_of(self, refs: np.ndarray) -> np.ndarray:
        """:meth:`_detail` of references (an array of ids), as rows of one array."""
        with self._lock:
            if len(refs) and int(refs.max()) >= len(self._detailed):
                self._grow_details(int(refs.max()) + 1)
            for ref_id in refs[~self._detailed[refs]].tolist():
                self._measure(ref_id)
            return self._details[refs]

    def _grow_details(self, size: int) -> None:
        """Room for references up to id ``size - 1``, and up to the index's highest (its
        ids are sorted). Called with the lock held."""
        index = self._index
        highest = int(index.ref_ids[-1]) if index is not None and len(index.ref_ids) else 0
        size = max(size, 2 * len(self._detailed), highest + 1)
        details = np.zeros((size, self._details.shape[1]))
        details[:len(self._details)] = self._details
        detailed = np.zeros(size, dtype=bool)
        detailed[:len(self._detailed)] = self._detailed
        saturated = np.zeros((size, 3))
        saturated[:len(self._saturated)] = self._saturated
        self._details, self._detailed, self._saturated = details, detailed, saturated

    #: Bytes of decoded thumbnails in luminance (:meth:`_measure`) an open registry keeps,
    #: the most recently decoded: 16 KB for a 128 px thumbnail (about 500), 1 KB for a 32
    #: px one (8,000).
    GRAYS_BYTES = 8 * 1024 * 1024

    def _gray(self, ref_id: int) -> np.ndarray:
        """A reference's stored thumbnail in luminance (``uint8``), decoded once while kept."""
        with self._lock:
            gray = self._grays.get(ref_id)
            if gray is None:
                self._measure(ref_id)
                gray = self._grays.get(ref_id)
            return gray

    def _measure(self, ref_id: int) -> None:
        """Decode a reference's stored thumbnail once for everything the search measures
        on it: its thumbnail detail and the colour of its coloured parts (kept while the
        registry is open), and its luminance, kept for :meth:`part_correlation` among the
        last :attr:`GRAYS_BYTES` decoded. Called with the lock held."""
        image = self._thumbnail_image(self._stored(ref_id)[0], ref_id)
        if ref_id >= len(self._detailed):
            self._grow_details(ref_id + 1)
        if self._detailed[ref_id]:  # measured (or taken from the index): its luminance alone
            gray = image.convert("L")
        else:
            gray, self._details[ref_id], self._saturated[ref_id] = _measures(image)
            self._detailed[ref_id] = True
        self._grays.put(ref_id, np.asarray(gray), self.GRAYS_BYTES)

    def _seed(self, index: "_Index") -> None:
        """Take the measures an index carries (every reference's thumbnail detail, the
        colour of its coloured parts, its quality) for the references not measured here
        yet, instead of decoding their thumbnails one by one as searches meet them. Called
        with the lock held, once the index is this registry's."""
        if index.measured_ids is None or not len(index.measured_ids):
            return
        ids = index.measured_ids
        if int(ids[-1]) >= len(self._detailed):
            self._grow_details(int(ids[-1]) + 1)
        new = np.flatnonzero(~self._detailed[ids])
        if not len(new):
            return
        ids_new = ids[new]
        self._details[ids_new] = index.details[new]
        self._saturated[ids_new] = index.saturated[new]
        self._detailed[ids_new] = True
        self._qualities.update(zip(ids_new.tolist(), index.qualities[new].tolist()))

    def _measured(self, ref_id: int) -> None:
        """:meth:`_measure` a reference not measured yet. Called with the lock held."""
        if ref_id >= len(self._detailed) or not self._detailed[ref_id]:
            self._measure(ref_id)

    def _saturated_apart(self, refs: np.ndarray, ours: np.ndarray | None,
                         contrast: float) -> list[tuple[tuple[int, None], float | None]]:
        """:meth:`saturated_distance` of the image's own coloured parts (``ours``: its
        :func:`~artengine.hashing.saturated_colour`) and the references among ``refs``
        whose thumbnails were measured, in one array operation, as ``((ref_id, None),
        distance)`` items (a call per reference took an eighth of a search of the demo's
        registry). The others are measured when a pair reaches their colours."""
        if ours is None:
            return [((ref_id, None), None) for ref_id in refs.tolist()]
        with self._lock:
            refs = refs[refs < len(self._detailed)]
            refs = refs[self._detailed[refs]]
            theirs = self._saturated[refs]
        coloured = ~np.isnan(theirs[:, 0])
        apart = colour_distance(ours, theirs[coloured], contrast).tolist()
        return [*zip(((ref_id, None) for ref_id in refs[coloured].tolist()), apart),
                *(((ref_id, None), None) for ref_id in refs[~coloured].tolist())]

    def saturated_distance(self, ref_id: int, hashes: ImageHashes, variant: str = "full",
                           contrast: float = 1.0) -> float | None:
        """:func:`~artengine.hashing.colour_distance` between the colours of the coloured
        parts (:func:`~artengine.hashing.saturated_colour`) of a match of ``variant``
        (:meth:`ImageHashes.colours_of`) and of a reference, measured on its stored
        thumbnail once per open registry; None when either has too little colour."""
        ours = hashes.colours_of(variant)[1]
        if ours is None:
            return None
        with self._lock:
            self._measured(ref_id)
            theirs = self._saturated[ref_id]
        if np.isnan(theirs[0]):
            return None
        return float(centred_colour_distance(centred_colour(ours), centred_colour(theirs), contrast))

    #: Bytes of summed-area tables (:meth:`part_correlation`) an open registry keeps, the
    #: most recently used: 0.13 MB for a 128 px thumbnail (about 240 of them), 9 KB for a
    #: 32 px one (about 3,600). A registry of small images (a training set of 32 px
    #: shapes) searched by images that resemble many of them made a table again for two
    #: of three tests when the tables kept were counted (256).
    PARTS_BYTES = 32 * 1024 * 1024

    def part_correlation(self, ref_id: int, detail: np.ndarray) -> tuple[float, str]:
        """The best :func:`~artengine.hashing.thumbnail_correlation` between an image's
        thumbnail detail (:func:`~artengine.hashing.thumbnail_detail`) and a part of a
        reference's stored thumbnail, with that part's name (``"part0.8@0.25,0.5"``: the
        share of each side kept, then the anchors, 0 left or top to 1 right or bottom):
        where a copy cut by up to a quarter of each side faces the reference.

        Every part of :data:`~artengine.hashing.PART_SCALES` at the anchors of
        :data:`~artengine.hashing.PART_ANCHORS`, then, if the best of them comes within
        :attr:`PART_REFINE_FROM` of a correlation of 1, its neighbours at half the steps
        (:data:`~artengine.hashing.PART_REFINE`); all from a summed-area table of the
        thumbnail's luminance (:func:`_part_details`), kept for the last
        :attr:`PARTS_BYTES` of them."""
        return self.part_correlations([ref_id], detail)[0]

    #: References whose parts :meth:`part_correlations` scores in one array operation: a
    #: grid's corner values for 32 of them take 7 MB.
    PARTS_AT_ONCE = 32

    def part_correlations(self, ref_ids: Sequence[int], detail: np.ndarray) -> list[tuple[float, str]]:
        """:meth:`part_correlation` of one image's thumbnail detail against each reference
        of ``ref_ids``, the same values: the references whose thumbnails have one size are
        scored :attr:`PARTS_AT_ONCE` at a time, one gather and one product for all of them
        (a search of look-alikes part-tests tens of references per image variant, and one
        reference at a time cost several times the arithmetic in calls)."""
        tables = [self._part_table(ref_id) for ref_id in ref_ids]
        key = np.asarray(detail, dtype=np.float64).tobytes()
        out: list[tuple[float, tuple[float, float, float]]] = [(0.0, _PART_GRID[0])] * len(tables)  # best, part
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, table in enumerate(tables):
            by_size.setdefault(table.integral.shape, []).append(i)
        for shape, members in by_size.items():
            height, width = shape[0] - 1, shape[1] - 1
            for start in range(0, len(members), self.PARTS_AT_ONCE):
                group = members[start:start + self.PARTS_AT_ONCE]
                scores = _part_scores_of([tables[i].integral for i in group], _grid_cells(width, height), detail,
                                         [tables[i].norms for i in group], _query_weights(key, width, height, None))
                grid_best = np.argmax(scores, axis=1).tolist()
                closer: dict[int, list[int]] = {}  # a grid part -> the rows whose best it is, to look at more closely
                for row, (i, k) in enumerate(zip(group, grid_best)):
                    out[i] = (float(scores[row, k]), _PART_GRID[k])
                    if out[i][0] >= 1 - self.PART_REFINE_FROM:
                        closer.setdefault(k, []).append(i)
                for k, near_members in closer.items():
                    near, cells = _near_cells(width, height, k)
                    near_scores = _part_scores_of(
                        [tables[i].integral for i in near_members], cells, detail,
                        [self._near_norms(ref_ids[i], tables[i], k, cells) for i in near_members],
                        _query_weights(key, width, height, k))
                    for row, i in enumerate(near_members):
                        j = int(np.argmax(near_scores[row]))
                        if near_scores[row, j] > out[i][0]:
                            out[i] = (float(near_scores[row, j]), near[j])
        return [(best, f"part{part[0]:.3g}@{part[1]:g},{part[2]:g}") for best, part in out]

    def _part_table(self, ref_id: int) -> _PartTable:
        """The :class:`_PartTable` of a reference, made now if it is not kept."""
        with self._lock:
            table = self._parts.get(ref_id)
            if table is None:
                luma = self._gray(ref_id).astype(np.float64)
                integral = np.pad(luma.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
                height, width = luma.shape
                table = self._parts.put(ref_id, _PartTable(integral, _part_norms(integral, _grid_cells(width, height))),
                                        self.PARTS_BYTES)
            return table

    def _near_norms(self, ref_id: int, table: _PartTable, k: int, cells: tuple[np.ndarray, ...]) -> np.ndarray:
        """The :func:`_part_norms` of the neighbours of grid part ``k`` of a reference's
        table (``cells``: theirs), kept with the table once made."""
        norms = table.near.get(k)
        if norms is None:
            norms = _part_norms(table.integral, cells)
            with self._lock:
                if k not in table.near:
                    table.near[k] = norms
                    self._parts.grew(ref_id, table, norms.nbytes)
                norms = table.near[k]
        return norms

    #: Parts are looked at more closely only when the best of the grid correlates at least
    #: 1 minus this. On the benchmark's calibration corpus (seed 1), each of the 1,233 of
    #: 1,650 copies cut by 15-25 % whose closer look reached 0.97 had a grid best of at
    #: least 0.68; the closer look gained up to 0.30.
    PART_REFINE_FROM = 0.35

    def correlation(self, ref_id: int, luma: np.ndarray, variant: str = "full",
                    variant_luma: Mapping[str, np.ndarray] | None = None,
                    variant_box: Mapping[str, tuple[float, float, float, float]] | None = None) -> float:
        """:func:`~artengine.hashing.thumbnail_correlation` of an image's luminance
        thumbnail (turned like the variant for a match of a turned one, e.g. ``"mirror"``;
        for a variant with its own thumbnail in ``variant_luma``, such as ``"trimmed"``,
        that one: pass the image's ``ImageHashes.variant_luma``) with a reference's stored
        thumbnail (cut to the variant's box in ``variant_box``, as for ``"straightened"``:
        pass the image's ``ImageHashes.variant_box``)."""
        box = (variant_box or {}).get(variant)
        return float(_query_detail(luma, variant, variant_luma) @ self._detail(ref_id, box))

    @staticmethod
    def _image_distance_sum(index: "_Index", ref_id: int, hashes: ImageHashes, whole_queries: list[int]) -> int:
        """Smallest pHash + dHash between a whole-image query variant and a whole-image
        stored variant of one reference (its rows are contiguous: the index is ordered by
        reference)."""
        start, end = np.searchsorted(index.ref_ids, [ref_id, ref_id + 1])
        codes = index.variants[start:end]
        keep = np.array([index.variant_names[int(c)] not in BAND_VARIANTS for c in codes], dtype=bool)
        if not keep.any() or not whole_queries:
            return 2 * 64
        total = sum(hamming(index.columns[a][start:end][keep][None, :], hashes[a][whole_queries][:, None])
                    .astype(np.int32) for a in ALGORITHMS)
        return int(total.min())

    def _index_path(self) -> Path | None:
        """Beside the registry if that folder is writable, else in the user's cache."""
        beside = Path(f"{self.path}.index")
        if os.access(self.path.parent, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK)):
            return beside
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "artengine" / "index"
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return cache / f"{self._meta['uuid']}.index" if os.access(cache, os.W_OK) else None

    def _rows(self, above: int = 0) -> tuple[int, int | None, str | None, str | None, list[tuple[Any, ...]],
                                             tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The generation, the rewrites count (None where the registry does not keep one),
        the sha256 of the reference with id ``above`` and of the highest one, the hash
        rows of the references with an id above ``above``, in index order, and those
        references' measures (ids, thumbnail details, colours of their coloured parts,
        qualities: :meth:`_seed`), read in one snapshot: they are those of that generation
        exactly."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                ids: list[int] = []
                details: list[np.ndarray] = []
                colours: list[np.ndarray] = []
                qualities: list[int] = []
                for ref_id, thumbnail, quality in self._conn.execute(
                        "SELECT id, thumbnail, quality FROM refs WHERE id > ? ORDER BY id", (above,)):
                    try:
                        gray, detail, colour = _measures(self._thumbnail_image(thumbnail, ref_id))
                    except RegistryError:  # unmeasured: a search that meets it says so, as before
                        continue
                    self._grays.put(ref_id, np.asarray(gray), self.GRAYS_BYTES)  # for a part test soon after
                    ids.append(ref_id)
                    details.append(detail)
                    colours.append(colour)
                    qualities.append(int(quality))
                meta = dict(self._conn.execute(
                    "SELECT key, value FROM meta WHERE key IN ('generation', 'rewrites')").fetchall())
                at = self._conn.execute("SELECT sha256 FROM refs WHERE id = ?", (above,)).fetchone()
                top = self._conn.execute("SELECT sha256 FROM refs ORDER BY id DESC LIMIT 1").fetchone()
                # The join drops hashes orphaned by a delete made without foreign keys on.
                rows = self._conn.execute(
                    f"SELECT h.ref_id, h.variant, {', '.join('h.' + a for a in COLUMNS)}, "
                    "r.colour_r, r.colour_g, r.colour_b FROM hashes h "
                    "JOIN refs r ON r.id = h.ref_id WHERE h.ref_id > ? ORDER BY h.ref_id, h.variant", (above,)
                ).fetchall()
            finally:
                self._conn.rollback()
        rewrites = meta.get("rewrites")
        measures = (np.asarray(ids, dtype=np.int64),
                    np.asarray(details, dtype=np.float64).reshape(len(ids), LUMA_SIDE * LUMA_SIDE),
                    np.asarray(colours, dtype=np.float64).reshape(len(ids), 3), np.asarray(qualities, dtype=np.int64))
        return (int(meta["generation"]), int(rewrites) if rewrites is not None else None,
                at[0] if at else None, top[0] if top else None, rows, measures)

    @staticmethod
    def _arrays_of(rows: Sequence[tuple[Any, ...]], variant_names: Sequence[str]
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        code = {v: i for i, v in enumerate(variant_names)}
        columns = {a: np.fromiter((int(r[2 + j], 16) for r in rows), dtype=np.uint64, count=len(rows))
                   for j, a in enumerate(COLUMNS)}
        ref_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        variants = np.fromiter((code[r[1]] for r in rows), dtype=np.uint16, count=len(rows))
        k = 2 + len(COLUMNS)
        colours = np.array([r[k:k + 3] for r in rows], dtype=np.float32).reshape(len(rows), 3)
        return columns, ref_ids, variants, colours

    def _build_index(self) -> "_Index":
        generation, rewrites, _, top, rows, measures = self._rows()
        variant_names = sorted({r[1] for r in rows})
        columns, ref_ids, variants, colours = self._arrays_of(rows, variant_names)
        index = _Index(self._meta["uuid"], generation, columns, ref_ids, variants, tuple(variant_names), colours,
                       rewrites=rewrites, top=top, measured_ids=measures[0], details=measures[1],
                       saturated=measures[2], qualities=measures[3])
        return self._written(index, self._index_path())

    def _written(self, index: "_Index", path: Path | None) -> "_Index":
        """``index`` stored at ``path`` for the registry's other readers, and read back
        memory-mapped; as it is where that cannot be."""
        if path is not None:
            try:
                index.write(path)
                written = _Index.load(path, self._meta["uuid"], index.generation)
                if written is not None:
                    return written
            except OSError:
                pass  # a read-only place: search from memory
        return index

    #: An index extended by at least this share of its rows is stored again (smaller
    #: extensions are cheap for each reader to make: a few rows per reference added).
    STORE_EXTENSION = 0.05

    def _extended(self, base: "_Index", path: Path | None, held: bool) -> "_Index | None":
        """``base`` with the rows of the references added since it was made, when nothing
        else changed since (no edit, delete or row put in below the top: the registry's
        ``rewrites`` count is the one ``base`` was made at, and its highest reference is
        still there); None otherwise. ``held``: ``base`` is this reader's index, whose
        measures it holds (the extension then carries the new references' alone)."""
        if base.rewrites is None or base.top is None or not len(base.ref_ids) or base.measured_ids is None:
            return None
        above = int(base.ref_ids[-1])
        generation, rewrites, at, top, rows, measures = self._rows(above)
        if rewrites != base.rewrites or generation < base.generation or at != base.top:
            return None
        names = base.variant_names
        if any(r[1] not in names for r in rows):
            return None  # a new kind of row: the codes of every row change
        columns, ref_ids, variants, colours = self._arrays_of(rows, names)
        # Held: the new references' measures alone (the others' are this reader's already;
        # copying them all again at each reference added cost a second per reader at
        # 100,000 references). Else every reference's, the stored ones and the new.
        names_of_measures = ("measured_ids", "details", "saturated", "qualities")
        index = _Index(base.uuid, generation, {a: np.concatenate([base.columns[a], columns[a]]) for a in COLUMNS},
                       np.concatenate([base.ref_ids, ref_ids]), np.concatenate([base.variants, variants]),
                       names, np.concatenate([base.colours, colours]), rewrites=rewrites, top=top,
                       measures_added=held,
                       **{name: new if held else np.concatenate([getattr(base, name), new])
                          for name, new in zip(names_of_measures, measures)})
        if len(rows) >= self.STORE_EXTENSION * max(1, len(base.ref_ids)):
            self._seed(index)
            return self._written(self._with_every_measure(index), path)
        return index

    def _with_every_measure(self, index: "_Index") -> "_Index":
        """An extended index with the measures of every reference, from this reader's
        (which holds them all: taken from the index extended, and from the extension)."""
        if not index.measures_added:
            return index
        ids = np.unique(index.ref_ids)
        with self._lock:
            ids = ids[ids < len(self._detailed)]
            ids = ids[self._detailed[ids]]  # (not a reference whose thumbnail cannot be read)
            return dataclasses.replace(index, measured_ids=ids, details=self._details[ids],
                                       saturated=self._saturated[ids],
                                       qualities=np.asarray([self._qualities[i] for i in ids.tolist()], dtype=np.int64),
                                       measures_added=False)


def _measures(image: Image.Image) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """What the search measures on a reference's stored thumbnail (RGB): its luminance,
    its thumbnail detail and the colour of its coloured parts (NaN where it has too
    little colour)."""
    gray = image.convert("L")
    colour = saturated_colour(image)
    return gray, thumbnail_detail(luma_thumbnail(gray)), np.full(3, np.nan) if colour is None else colour


def _rank(distances: dict[str, int]) -> tuple[int, int]:
    return (sum(distances.values()), max(distances.values()))


def _match_order(match: Match) -> tuple[int, int, float, float]:
    """Closest first: by the hash distances, then (references equally close by their
    hashes, as flat pictures of one layout are) by the colour, then by the colour of the
    coloured parts."""
    saturated = match.saturated_distance
    return (*_rank(match.distances), round(float(match.colour_distance), 4),
            1.0 if saturated is None else round(float(saturated), 4))


@dataclass
class _Index:
    """Hash columns of a registry, aligned by row: ``columns[alg][i]``, ``ref_ids[i]``,
    ``variants[i]`` and ``colours[i]`` (the reference's colour signature) describe hash row
    ``i``. On disk: magic, a JSON header, then the arrays, each 64-byte aligned,
    memory-mapped on load."""

    uuid: str
    generation: int
    columns: dict[str, np.ndarray]
    ref_ids: np.ndarray
    variants: np.ndarray
    variant_names: tuple[str, ...]
    colours: np.ndarray  # (rows, 3) float32
    #: The registry's rewrites count the rows were read at (None: it kept none then), and
    #: the sha256 of its highest reference then.
    rewrites: int | None = None
    top: str | None = None
    #: Per reference (sorted ids; None in an index made before stop 46): the measures
    #: the search takes of its stored thumbnail, made once for every reader
    #: (:meth:`ReferenceRegistry._seed`): thumbnail detail (refs, LUMA_SIDE ** 2), the
    #: colour of its coloured parts (refs, 3; NaN for none), hash quality.
    measured_ids: np.ndarray | None = None
    details: np.ndarray | None = None
    saturated: np.ndarray | None = None
    qualities: np.ndarray | None = None
    #: True in an index extended in memory: its measures are those of the references
    #: added alone (its reader holds the others'); never written so.
    measures_added: bool = False
    #: Per band: its rows and their first hashes, a copy (:meth:`pairs_within`); made on
    #: first use (12 bytes per band row: about 1.2 per row of the index).
    _bands: dict[str, tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False, compare=False)

    #: Rows of the first hash column scanned at a time (:func:`~artengine.hashing.hamming_within`).
    SCAN_CHUNK = 1 << 17
    #: Indexes of fewer rows are scanned whole for every query, bands included: below a
    #: chunk, the scan costs about what sorting out the kinds of rows does.
    BANDS_APART_FROM = 1 << 17

    def pairs_within(self, queries: np.ndarray, kinds: Sequence[str | None], use_bands: bool,
                     max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`~artengine.hashing.hamming_within` of the first hash column and the query
        variants' first hashes (``kinds``: each one's band, or None for a whole image),
        less the pairs a search never compares: a band and a row of any other kind, a
        whole image and a band, any band without ``use_bands``. Each band's queries scan
        only that band's rows (2 of the 21 rows of a reference), not all of them: a
        fifth less to scan for an image's usual 6 whole variants and 2 bands. The
        pairs in the order of a scan of every row (chunk by chunk, in each chunk query
        by query). An index of fewer than :attr:`BANDS_APART_FROM` rows gives every pair
        of a scan of every row, each query's, as it is."""
        if len(self.ref_ids) < self.BANDS_APART_FROM:
            return hamming_within(self.columns[ALGORITHMS[0]], queries, max_distance, chunk=self.SCAN_CHUNK)
        is_band = np.array([name in BAND_VARIANTS for name in self.variant_names])
        if self._bands is None:  # two threads may both make them: the same arrays
            first = self.columns[ALGORITHMS[0]]
            bands: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for code in np.flatnonzero(is_band).tolist():
                rows = np.flatnonzero(self.variants == code).astype(np.int32 if len(first) < 2 ** 31 else np.int64)
                bands[self.variant_names[code]] = (rows, np.ascontiguousarray(first[rows]))
            self._bands = bands
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        whole = [q for q, kind in enumerate(kinds) if kind is None]
        if whole:
            qi, rows, dist = hamming_within(self.columns[ALGORITHMS[0]], queries[whole], max_distance,
                                            chunk=self.SCAN_CHUNK)
            keep = ~is_band[self.variants[rows]]
            found.append((np.asarray(whole, dtype=np.int64)[qi[keep]], rows[keep], dist[keep]))
        for band, (rows, table) in self._bands.items() if use_bands else ():
            asked = [q for q, kind in enumerate(kinds) if kind == band]
            if asked:
                qi, at, dist = hamming_within(table, queries[asked], max_distance, chunk=self.SCAN_CHUNK)
                found.append((np.asarray(asked, dtype=np.int64)[qi], rows[at].astype(np.int64), dist))
        if len(found) == 1:
            return found[0]
        if not found:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0, dtype=np.uint8)
        qi, rows, dist = (np.concatenate(parts) for parts in zip(*found))
        order = np.lexsort((rows, qi, rows // min(self.SCAN_CHUNK, len(self.ref_ids))))
        return qi[order], rows[order], dist[order]

    def _arrays(self) -> dict[str, np.ndarray]:
        assert not self.measures_added, "an extended index is written with every reference's measures"
        measures = {} if self.measured_ids is None else {
            "measured_ids": self.measured_ids, "details": np.ascontiguousarray(self.details).reshape(-1),
            "saturated": np.ascontiguousarray(self.saturated).reshape(-1), "qualities": self.qualities}
        return {**{f"hash:{a}": c for a, c in self.columns.items()},
                "ref_ids": self.ref_ids, "variants": self.variants,
                "colours": np.ascontiguousarray(self.colours, dtype=np.float32).reshape(-1), **measures}

    def write(self, path: Path) -> None:
        arrays = self._arrays()
        layout, offset = {}, 0
        for name, arr in arrays.items():
            layout[name] = {"offset": offset, "dtype": arr.dtype.str, "count": int(arr.shape[0])}
            offset += -(-arr.nbytes // _ALIGN) * _ALIGN
        header = json.dumps({"uuid": self.uuid, "generation": self.generation, "rewrites": self.rewrites,
                             "top": self.top,
                             "scheme": HASH_SCHEME,
                             "schema_version": SCHEMA_VERSION,
                             "variant_names": list(self.variant_names), "arrays": layout,
                             "data_bytes": offset}).encode()
        head_len = -(-(len(_INDEX_MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN
        buf = bytearray(head_len + offset)
        buf[:8] = _INDEX_MAGIC
        buf[8:16] = len(header).to_bytes(8, "little")
        buf[16:16 + len(header)] = header
        for name, arr in arrays.items():
            start = head_len + layout[name]["offset"]
            buf[start:start + arr.nbytes] = np.ascontiguousarray(arr).tobytes()
        atomic_write_bytes(path, bytes(buf))

    @classmethod
    def load(cls, path: Path, uuid_: str, generation: int | None = None) -> "_Index | None":
        """The index at ``path`` if it is intact and of this registry at ``generation``
        (None: at whatever generation it was made), else None."""
        try:
            with open(path, "rb") as fh:
                if fh.read(8) != _INDEX_MAGIC:
                    return None
                header_len = int.from_bytes(fh.read(8), "little")
                if header_len > 1 << 24:
                    return None
                header = json.loads(fh.read(header_len))
            size = path.stat().st_size
        except (OSError, ValueError):
            return None
        head_len = -(-(16 + header_len) // _ALIGN) * _ALIGN
        if (header.get("uuid") != uuid_ or (generation is not None and header.get("generation") != generation)
                or not isinstance(header.get("generation"), int)
                or header.get("scheme") != HASH_SCHEME or header.get("schema_version") != SCHEMA_VERSION
                or size != head_len + header.get("data_bytes", -1)):
            return None
        try:
            data = np.memmap(path, dtype=np.uint8, mode="r")
            arrays = {}
            for name, spec in header["arrays"].items():
                dtype = np.dtype(spec["dtype"])
                start = head_len + spec["offset"]
                arrays[name] = data[start:start + dtype.itemsize * spec["count"]].view(dtype)
            columns = {a: arrays[f"hash:{a}"] for a in COLUMNS}
            colours = arrays["colours"].reshape(-1, 3)
            if colours.shape[0] != arrays["ref_ids"].shape[0]:
                return None
            rewrites, top = header.get("rewrites"), header.get("top")
            measures: dict[str, np.ndarray] = {}
            if "measured_ids" in arrays:
                refs = len(arrays["measured_ids"])
                measures = {"measured_ids": arrays["measured_ids"], "qualities": arrays["qualities"],
                            "details": arrays["details"].reshape(-1, LUMA_SIDE * LUMA_SIDE),
                            "saturated": arrays["saturated"].reshape(-1, 3)}
                if not (len(measures["details"]) == len(measures["saturated"]) == len(measures["qualities"]) == refs):
                    return None
            return cls(uuid_, header["generation"], columns, arrays["ref_ids"], arrays["variants"],
                       tuple(header["variant_names"]), colours, rewrites=rewrites if isinstance(rewrites, int) else None,
                       top=top if isinstance(top, str) else None, **measures)
        except (KeyError, ValueError, TypeError, OSError):
            return None


def open_registries(paths: Sequence[str | os.PathLike[str]]) -> list[ReferenceRegistry]:
    """Open several registries read-only (a policy's, the command line's, each style's).
    The first bad one raises :class:`RegistryError` naming it; duplicates open once."""
    opened: list[ReferenceRegistry] = []
    seen: set[Path] = set()
    try:
        for p in paths:
            resolved = Path(p).resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            registry = ReferenceRegistry(p)
            opened.append(registry)
            registry.index()  # empty registries and unreadable indexes fail here, up front
    except BaseException:
        for r in opened:
            r.close()
        raise
    return opened


def _version(uuid_hex: str, generation: int) -> str:
    return f"generation {generation} of {uuid_hex}"


def registry_version(path: str | os.PathLike[str]) -> str | None:
    """The registry at ``path`` as it is now: its id and generation, which moves on with
    every change to its references ("generation 12 of 3f0c..."); None when it cannot be
    opened (missing, corrupt, incompatible)."""
    try:
        registry = ReferenceRegistry(path)
    except ArtengineError:
        return None
    try:
        return _version(registry._meta["uuid"], registry.generation())
    finally:
        registry.close()


def search_registries(registries: Sequence[ReferenceRegistry], hashes: ImageHashes,
                      thresholds: dict[str, float], accept: Callable[[Match], bool] | None = None) -> list[Match]:
    """Search every registry (:meth:`ReferenceRegistry.search`, with ``accept``); all
    matches, closest first."""
    matches = [m for r in registries for m in r.search(hashes, thresholds, accept)]
    return sorted(matches, key=_match_order)


def upgrade_registry(db: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
    """Bring an existing registry to :data:`SCHEMA_VERSION` in place; returns the schema
    version it had and its :meth:`~ReferenceRegistry.info` after. A registry already
    current is left as it is; a missing file or a schema this artengine cannot upgrade is a
    :class:`RegistryError`."""
    path = Path(db)
    if not path.exists():
        raise RegistryError(path, "no such file")
    before: int | None = None
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        conn.close()
        before = int(row[0]) if row and str(row[0]).isdigit() else None
    except sqlite3.DatabaseError:
        pass  # the full check below names the problem
    with ReferenceRegistry(path, create=True) as registry:
        if registry.count():
            registry.index()
        return (before if before is not None else SCHEMA_VERSION), registry.info()


def add_to_registry(db: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], *,
                    licence: str = "", source: str = "", progress: bool = True) -> tuple[AddSummary, dict[str, Any]]:
    """Create or extend the registry ``db`` with images (files or folders, recursively);
    returns what was done and the registry's :meth:`~ReferenceRegistry.info`. Brings the
    search index up to date (extended by the new references, or made from every row, with
    every reference's measures) so that the first audit does not pay for it."""
    from tqdm import tqdm

    files = list(iter_image_files(paths))
    with ReferenceRegistry(db, create=True) as registry:
        with tqdm(total=len(files), desc=f"hashing into {Path(db).name}", unit="img",
                  disable=None if progress else True) as bar:
            summary = registry.add(files, licence=licence, source=source, progress=bar.update)
        if registry.count():
            registry.index()
        return summary, registry.info()
