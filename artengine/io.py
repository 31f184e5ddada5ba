"""Safe image input and atomic output.

Every image artengine reads goes through :func:`open_image`; every file it writes goes
through one of the ``atomic_*`` functions. Reading is defensive because studios audit
folders from other tools: only an allowlist of formats is decoded (no EPS, which would
spawn Ghostscript, and no FITS), Pillow's decompression-bomb limit is an error rather than a
warning, truncated or foreign files are errors naming the file (we never set
``ImageFile.LOAD_TRUNCATED_IMAGES``), EXIF orientation is applied, and every mode is
normalised to RGB along one path, with any alpha channel kept aside so it can be restored.

Writing is atomic: a temporary file in the destination folder, flushed and fsynced, then
``os.replace``. A crash leaves the old file or the new one, never half of either, and
:func:`remove_stray_temps` clears temporaries left behind by a killed process.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import struct
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import ImageLoadError, InputError

#: Formats artengine will decode. Anything else is refused before decoding.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")

#: File suffixes considered images when scanning folders.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)

#: Pillow's own default limit (about 89.5 megapixels), kept even if a library resets it.
DEFAULT_MAX_PIXELS = 89_478_485

_TEMP_SUFFIX = ".artengine-tmp"


@dataclass(frozen=True)
class LoadedImage:
    """An image read safely: RGB pixels plus what was set aside to get there."""

    path: str
    rgb: Image.Image  # mode "RGB", EXIF orientation applied
    alpha: Image.Image | None  # mode "L", or None when the source had no transparency
    format: str  # the decoder that read it, e.g. "PNG"
    mode: str  # the source mode before normalisation, e.g. "P", "I;16", "CMYK"
    text: Mapping[str, str]  # PNG text chunks (tEXt, zTXt, iTXt); empty for other formats
    #: (width, height) of the image at full scale, oriented as ``rgb``; differs from
    #: ``rgb.size`` only when ``open_image(min_side=...)`` decoded a JPEG at a reduced scale.
    full_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size

    def pixels(self) -> np.ndarray:
        """The RGB pixels as a ``(height, width, 3)`` uint8 array."""
        return np.asarray(self.rgb, dtype=np.uint8)


def open_image(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_side: int | None = None,
) -> LoadedImage:
    """Read an image safely and normalise it to RGB.

    ``source`` is a path or the file's bytes (then ``name`` is used in messages).
    Raises :class:`ImageLoadError` naming the file for anything that is not a complete,
    allowed, reasonably sized image.

    ``min_side``: for a caller that only needs the image this large, a JPEG is decoded at
    a reduced scale (libjpeg's DCT scaling, 1/2 to 1/8; what Pillow's ``thumbnail`` does)
    as long as both sides stay at least ``min_side`` pixels. The size limit applies to
    the full size.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    limit = max_pixels or Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    _refuse_bomb_warnings()
    try:
        own = _own_png(source, limit)
        if own is not None:  # as a job writes them: the same pixels and text as Pillow's
            pixels, text = own
            height, width = pixels.shape[:2]
            return LoadedImage(path=label, rgb=Image.fromarray(pixels, mode="RGB"), alpha=None, format="PNG",
                               mode="RGB", text=text, full_size=(width, height))
        fp: Any = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
        with Image.open(fp, formats=ALLOWED_FORMATS) as im:
            width, height = im.size
            if width * height > limit:
                raise ImageLoadError(
                    label,
                    f"{width}x{height} pixels exceeds the limit of {limit} pixels "
                    "(possible decompression bomb)",
                )
            if min_side and im.format == "JPEG":
                im.draft(None, (min_side, min_side))
            im.load()
            text = _text_chunks(im)
            fmt = im.format or "unknown"
            mode = im.mode
            decoded_size = im.size
            # In place: without an orientation to apply, exif_transpose would return a
            # copy, and both would be held until the function returns (twice the pixels).
            ImageOps.exif_transpose(im, in_place=True)
            turned = im.size != decoded_size
            full_size = (height, width) if turned else (width, height)
            rgb, alpha = to_rgb(im)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(label, "is a directory, not an image") from None
    except PermissionError:
        raise ImageLoadError(label, "permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(label, f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            label,
            "not a readable image in an allowed format (" + ", ".join(ALLOWED_FORMATS) + ")",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated data, corrupt chunks, bad headers.
        raise ImageLoadError(label, f"corrupt or truncated image: {exc}") from None
    return LoadedImage(path=label, rgb=rgb, alpha=alpha, format=fmt, mode=mode, text=text, full_size=full_size)


def _own_png(source: str | os.PathLike[str] | bytes, limit: int) -> tuple[np.ndarray, dict[str, str]] | None:
    """:func:`decode_png_up` of ``source`` (bytes or a file), or None. A file is read
    whole only when its first 33 bytes are the signature and an 8-bit RGB header: any
    other file costs one short read before Pillow opens it."""
    if isinstance(source, bytes):
        data = source
    else:
        with open(source, "rb") as f:
            data = f.read(33)  # the signature and the IHDR chunk
            if len(data) < 33 or data[:16] != _PNG_SIGNATURE + b"\0\0\0\x0dIHDR" \
                    or _own_size(data[16:29], limit) is None:
                return None
            data += f.read()
    return decode_png_up(data, max_pixels=limit)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the kernel's MemAvailable, less where
    the process's cgroup (v2 or v1) has a limit closer to its usage. None where the system
    tells neither (not Linux)."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
        cgroups = Path("/proc/self/cgroup").read_text().splitlines()
    except (OSError, ValueError, IndexError):
        cgroups = []
    for line in cgroups:
        _, controllers, where = (line.split(":", 2) + ["", ""])[:3]
        if not where:
            continue
        if controllers == "":  # v2
            folder, files = Path("/sys/fs/cgroup") / where.lstrip("/"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # v1
            folder, files = Path("/sys/fs/cgroup/memory") / where.lstrip("/"), ("memory.limit_in_bytes",
                                                                                 "memory.usage_in_bytes")
        else:
            continue
        try:
            limit, usage = ((folder / name).read_text().strip() for name in files)
            if limit != "max" and int(limit) < 1 << 60:
                found.append(max(0, int(limit) - int(usage)))
        except (OSError, ValueError):
            continue
    return min(found) if found else None


_BOMB_FILTER_LOCK = threading.Lock()


def _refuse_bomb_warnings() -> None:
    """Pillow only warns about an image between 1x and 2x its pixel limit; artengine refuses
    it. The refusal is a warnings filter turning that warning into an error, first in the
    process's list from the first image artengine reads (put back there if something took
    it away). Not a ``warnings.catch_warnings`` per read: that swaps the process-wide list,
    so reads on several threads (an image folder, the report's thumbnails) left it changed
    and could decode with the filter already gone (Python before 3.14)."""
    with _BOMB_FILTER_LOCK:
        for action, message, category, module, _ in warnings.filters:
            if message is None and module is None and issubclass(Image.DecompressionBombWarning, category):
                if action == "error" and category is Image.DecompressionBombWarning:
                    return
                break
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _text_chunks(im: Image.Image) -> dict[str, str]:
    text = getattr(im, "text", None)
    if not text:
        return {}
    return {str(k): str(v) for k, v in text.items()}


def to_rgb(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The one normalisation path: any Pillow mode to ``(RGB image, alpha or None)``.

    Alpha is split off rather than composited, so audits see the painted pixels and a
    writer can put the transparency back with :func:`restore_alpha`. High bit-depth
    greyscale is scaled, not clipped.
    """
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    if mode in ("L", "P", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        return im.convert("RGB"), None
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(im)), mode="L").convert("RGB"), None
    return im.convert("RGB"), None


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale integer or float greyscale to 0..255 by its nominal range."""
    if values.dtype.kind == "f":
        top = float(np.nanmax(values)) if values.size else 1.0
        scaled = values / (top if top > 1.0 else 1.0) * 255.0
        return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    values = values.astype(np.int64)
    top = int(values.max()) if values.size else 0
    if top <= 255:
        return np.clip(values, 0, 255).astype(np.uint8)
    if top <= 65535:
        return (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    return (np.clip(values, 0, None) * 255 // top).astype(np.uint8)


def restore_alpha(rgb: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """Put a split-off alpha channel back onto processed RGB pixels."""
    if alpha is None:
        return rgb
    if alpha.size != rgb.size:
        alpha = alpha.resize(rgb.size, Image.Resampling.BILINEAR)
    out = rgb.convert("RGB")
    out.putalpha(alpha)
    return out


def safe_crop(im: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Crop, refusing any box that is not inside the image.

    Pillow pads an out-of-range box with black and allocates the whole box, so a hostile
    box can allocate gigabytes; we check first and allocate nothing.
    """
    if len(box) != 4 or not all(isinstance(v, (int, np.integer)) for v in box):
        raise ValueError(f"crop box must be four integers, got {box!r}")
    left, top, right, bottom = (int(v) for v in box)
    width, height = im.size
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"crop box {box!r} is not inside the {width}x{height} image")
    return im.crop((left, top, right, bottom))


def iter_image_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Image files named directly, or found recursively in folders, in sorted order.

    Hidden files and artengine temporaries are skipped. A missing path is an error.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    yield child
        elif path.exists():
            yield path
        else:
            raise InputError(f"{path}: no such file or folder")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- writing


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make renames and new names in ``directory`` durable (best effort where the OS cannot)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, sync_dir: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``).

    The folder is fsynced too, so the new name survives a power cut. A caller writing
    many files into one folder may pass ``sync_dir=False`` and call :func:`fsync_dir`
    once before it relies on them (the generation writer does, per chunk).
    """
    target = Path(path)
    tmp = _temp_path(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # A write, an fsync (a full disk), the temporary's creation (a folder not
        # writable): the error names the file it was for.
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from None
        raise
    if sync_dir:
        fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2) -> Path:
    """Serialise ``value`` as JSON and write it atomically. Serialisation happens first,
    so a value that cannot be encoded never touches the file."""
    return atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=False) + "\n")


#: zlib's compression strategies by name (Pillow's ``compress_type``).
ZLIB_STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "filtered": zlib.Z_FILTERED,
                   "huffman": zlib.Z_HUFFMAN_ONLY, "rle": zlib.Z_RLE, "fixed": zlib.Z_FIXED}
#: The deflate of ISA-L (the ``isal`` package), levels 0-3: a zlib stream like any other
#: (every PNG reader decodes it), made 3-4x faster than zlib's level 1 on marked 256 px
#: images and about 3 % smaller (see docs/generation.md). Only with ``png_filter="up"``.
ISAL = "isal"
ISAL_LEVELS = range(0, 4)
#: Every ``strategy`` :func:`encode_image` takes for PNG.
PNG_STRATEGIES = (*ZLIB_STRATEGIES, ISAL)


#: PNG row filters ``encode_image`` offers. ``adaptive`` is Pillow's encoder, which tries
#: four filters on every row; ``up`` filters every row against the one above in one array
#: operation and deflates the whole image in one call: on marked 256 px images at level 1,
#: 2.7 ms against 4.7 ms, for files about 5 % larger (see docs/generation.md).
PNG_FILTERS = ("adaptive", "up")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {"RGB": 2, "RGBA": 6, "L": 0, "LA": 4}
_ARRAY_MODES = {(2, 1): "L", (3, 2): "LA", (3, 3): "RGB", (3, 4): "RGBA"}  # (ndim, channels) -> mode


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _encode_png_up(image: Image.Image | np.ndarray, text: Mapping[str, str], level: int, strategy: str) -> bytes:
    """A PNG whose rows all use filter type 2 (Up), deflated in one call (zlib's with
    ``strategy``, or ISA-L's; both release the GIL). Text goes into uncompressed iTXt
    chunks, as Pillow writes them. ``image``: a Pillow image, or its pixels as an array
    (see :func:`encode_image`)."""
    if isinstance(image, np.ndarray):
        pixels, mode = image, _ARRAY_MODES.get((image.ndim, image.shape[-1] if image.ndim == 3 else 1))
        if image.dtype != np.uint8 or mode is None:
            raise ValueError(f"PNG filter 'up' takes (H, W), (H, W, 2), (H, W, 3) or (H, W, 4) uint8 pixels, "
                             f"not {image.shape} {image.dtype}")
    elif image.mode in _PNG_COLOUR_TYPES:
        pixels, mode = np.asarray(image), image.mode
    else:
        raise ValueError(f"PNG filter 'up' takes RGB, RGBA, L or LA images, not mode {image.mode}")
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256
    if strategy == ISAL:
        from isal import isal_zlib

        idat = isal_zlib.compress(filtered, level)
    else:
        deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 9, ZLIB_STRATEGIES[strategy])
        idat = deflate.compress(filtered) + deflate.flush()
    parts = [_PNG_SIGNATURE,
             _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[mode], 0, 0, 0))]
    for key, value in text.items():
        keyword = key.encode("latin-1")
        if not 1 <= len(keyword) <= 79 or b"\0" in keyword:
            raise ValueError(f"PNG text key {key!r}: 1 to 79 Latin-1 characters without NUL")
        parts.append(_png_chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8")))
    parts += [_png_chunk(b"IDAT", idat), _png_chunk(b"IEND", b"")]
    return b"".join(parts)


#: Larger images go to Pillow, whose decode holds one copy of the pixels; this reader holds
#: the compressed file, the filtered rows and the pixels at once (a 16-megapixel image:
#: about 100 MB at most).
_OWN_PNG_PIXELS = 1 << 24


def _own_size(ihdr: bytes | memoryview, limit: int) -> tuple[int, int] | None:
    """``(width, height)`` from the 13 bytes of an IHDR chunk when it is one
    :func:`decode_png_up` reads (8-bit RGB, not interlaced, at most ``limit`` and
    :data:`_OWN_PNG_PIXELS` pixels), else None."""
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    if (depth, colour, compression, filtering, interlace) != (8, 2, 0, 0, 0) \
            or not width or not height or width * height > min(limit, _OWN_PNG_PIXELS):
        return None
    return width, height


def decode_png_up(data: bytes, *, max_pixels: int | None = None) -> tuple[np.ndarray, dict[str, str]] | None:
    """The ``(H, W, 3)`` uint8 pixels and the text of a PNG laid out exactly as
    :func:`encode_image` writes an RGB image with ``png_filter="up"``, read with ISA-L's
    inflate: about half the time of Pillow's decode, for the check of every image a job
    encodes. None for any other file, which :func:`open_image` then reads.

    Accepted: the signature; IHDR (8-bit RGB, not interlaced, at most ``max_pixels`` or
    Pillow's limit, and at most 16 megapixels); uncompressed iTXt chunks with neither
    language nor translated keyword, each keyword once, UTF-8 text; IDAT chunks; an empty
    IEND that ends the data. Every chunk's CRC must hold, the compressed stream must end exactly with the
    pixels and every row must use filter type 2 (Up). On such a file Pillow reads the
    same pixels and text; anything else, including a damaged copy, goes to Pillow and
    gets its verdict."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    limit = min(max_pixels or Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS,
                Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS)
    view = memoryview(data)
    pos, end_of_data = len(_PNG_SIGNATURE), len(data)
    size: tuple[int, int] | None = None
    text: dict[str, str] = {}
    text_bytes = 0
    idat: list[memoryview] = []
    idat_follows = False  # the last chunk was an IDAT: IDAT chunks must be consecutive
    while True:
        if pos + 12 > end_of_data:
            return None
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > end_of_data:
            return None
        body = view[pos + 8: end - 4]
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, end - 4)[0]:
            return None
        pos = end
        if size is None:  # IHDR first
            size = _own_size(body, limit) if kind == b"IHDR" and length == 13 else None
            if size is None:
                return None
        elif kind == b"iTXt" and not idat:
            chunk = bytes(body)
            keyword, nul, rest = chunk.partition(b"\0")
            key = keyword.decode("latin-1")
            text_bytes += len(rest)
            if not nul or not 1 <= len(keyword) <= 79 or not rest.startswith(b"\0\0\0\0") or key in text \
                    or text_bytes > PngImagePlugin.MAX_TEXT_MEMORY:
                return None
            try:
                text[key] = rest[4:].decode("utf-8")
            except UnicodeDecodeError:
                return None
        elif kind == b"IDAT" and (not idat or idat_follows):
            idat.append(body)
        elif kind == b"IEND" and idat and length == 0 and pos == end_of_data:
            break
        else:
            return None
        idat_follows = kind == b"IDAT"
    from isal import isal_zlib

    width, height = size
    stride = 3 * width + 1
    expected = height * stride
    inflate = isal_zlib.decompressobj()
    try:
        # The first row alone first: another writer's PNG (adaptive filters) is turned
        # away before the rest is inflated for nothing.
        raw = bytearray(inflate.decompress(b"".join(idat) if len(idat) > 1 else idat[0], stride))
        if len(raw) != stride or raw[0] != 2:
            return None
        raw += inflate.decompress(inflate.unconsumed_tail, expected + 1 - stride)
    except isal_zlib.error:
        return None
    if len(raw) != expected or not inflate.eof or inflate.unused_data or inflate.unconsumed_tail:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride)
    if not (rows[:, 0] == 2).all():
        return None
    _undo_up(rows)
    return np.ascontiguousarray(rows[:, 1:]).reshape(height, width, 3), text


def _undo_up(rows: np.ndarray) -> None:
    """Undo PNG's Up filter in place: each row plus the decoded row above it, mod 256 (a
    running sum down the columns). In blocks of about sqrt(height) rows: the blocks' rows
    summed within their block side by side, then each block given the last row of the one
    above; some 2 sqrt(height) numpy calls instead of a call per row."""
    height = rows.shape[0]
    rows_per_block = max(1, int(height ** 0.5))
    blocks_count = height // rows_per_block
    whole = blocks_count * rows_per_block
    blocks = rows[:whole].reshape(blocks_count, rows_per_block, -1)
    for i in range(1, rows_per_block):
        blocks[:, i] += blocks[:, i - 1]  # uint8 arithmetic wraps mod 256
    for j in range(1, blocks_count):
        blocks[j] += blocks[j - 1, -1]
    for k in range(whole, height):
        rows[k] += rows[k - 1]


def encode_image(
    image: Image.Image | np.ndarray,
    *,
    format: str = "PNG",
    text: Mapping[str, str] | None = None,
    compress_level: int = 6,
    quality: int = 95,
    strategy: str = "default",
    png_filter: str = "adaptive",
) -> bytes:
    """Encode an image to bytes. PNG ``text`` is stored as UTF-8 iTXt chunks; ``strategy``
    is zlib's for PNG (``default``, ``filtered``, ``huffman``, ``rle``, ``fixed``): ``rle``
    suits PNG's filtered rows and at level 1 is faster and smaller than the default; or
    ``isal``, ISA-L's deflate at ``compress_level`` 0-3 (with ``png_filter="up"`` only).
    ``png_filter`` is one of :data:`PNG_FILTERS`.

    ``image`` may also be uint8 pixels, ``(H, W)`` or ``(H, W, C)`` (L, LA, RGB or RGBA by
    C): the Up filter encodes them as they are, without a copy of a Pillow image's."""
    fmt = format.upper()
    if isinstance(image, np.ndarray) and not (fmt == "PNG" and png_filter == "up"):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    if fmt == "PNG":
        if strategy not in PNG_STRATEGIES:
            raise ValueError(f"PNG strategy {strategy!r}: choose one of {', '.join(PNG_STRATEGIES)}")
        if png_filter not in PNG_FILTERS:
            raise ValueError(f"PNG filter {png_filter!r}: choose one of {', '.join(PNG_FILTERS)}")
        if strategy == ISAL and (png_filter != "up" or compress_level not in ISAL_LEVELS):
            raise ValueError(f"PNG strategy {ISAL!r} takes png_filter 'up' and compress_level 0-3, "
                             f"not {png_filter!r} and {compress_level}")
        if png_filter == "up":
            return _encode_png_up(image, text or {}, compress_level, strategy)
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            info.add_itxt(key, value)
        image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level,
                   compress_type=ZLIB_STRATEGIES[strategy])
    elif fmt in ("JPEG", "JPG"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()


def atomic_save_image(
    path: str | os.PathLike[str],
    image: Image.Image,
    *,
    text: Mapping[str, str] | None = None,
    compress_level: int = 6,
    quality: int = 95,
) -> Path:
    """Encode ``image`` (format from the suffix; PNG can carry ``text``) and write it
    atomically."""
    target = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}.get(
        target.suffix.lower(), "PNG"
    )
    if text and fmt != "PNG":
        raise InputError(f"{target}: text metadata needs a PNG file")
    data = encode_image(image, format=fmt, text=text, compress_level=compress_level, quality=quality)
    return atomic_write_bytes(target, data)


def remove_stray_temps(directory: str | os.PathLike[str], *, recursive: bool = True) -> int:
    """Delete temporaries left by an interrupted atomic write. Returns how many."""
    root = Path(directory)
    if not root.is_dir():
        return 0
    pattern = f".*{_TEMP_SUFFIX}"
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    count = 0
    for tmp in found:
        try:
            tmp.unlink()
            count += 1
        except FileNotFoundError:
            pass
    return count
