"""The built-in watermark ``stdm``: keyed spread-transform dither modulation in a
resolution-independent block domain, with Reed-Solomon coding, a keyed integrity tag and a
Fourier synchronisation template.

How a payload travels:

1. **Code.** 48 payload bits, a 32-bit keyed tag (HMAC-SHA256 of the payload, truncated)
   and 6 Reed-Solomon parity bytes (``reedsolo``) make a 128-bit codeword, XOR-scrambled with
   a keyed sequence. Reed-Solomon corrects byte errors and erasures; the tag makes a
   corrupted codeword that RS "corrects" into some other word fail the check, so a damaged
   mark reads as "not detected", never as a different payload (false accept <= 2^-32 per
   decoding attempt).
2. **Working domain.** The luma plane is resampled (antialiased bicubic) to a 128x128
   working image whatever the image size or aspect, so any later resize leaves the
   working image almost unchanged: resizing is handled by construction, not by search.
3. **Transform and modulation.** The working image is cut into 256 blocks of 8x8; in each,
   two keyed orthonormal directions spanning low/mid block-DCT frequencies (u+v in 1..4)
   carry one codeword bit each (512 cells, every bit in 4 cells spread over the image by
   a keyed permutation). A cell's projection, divided by a perceptual mask (the local
   contrast of the surrounding 5x5 blocks, with a floor), is quantised onto one of two
   interleaved lattices (dither modulation). The mask makes the change larger in busy
   areas and smaller in flat ones (perceptual masking) and makes the statistic invariant
   to brightness and contrast changes; quantising instead of adding a fixed pattern
   cancels the host image's own interference, which is what lets a 48-bit payload survive
   at PSNR >= 40 dB.
4. **Synchronisation template.** A quarter of the distortion budget goes to four keyed
   sinusoids (a template of peaks in the Fourier domain). Cropping and rotating move the
   peaks; the detector finds them in the whitened spectrum, estimates the linear map
   (scale, rotation, aspect), reads the translation from the sinusoids' phases, refines
   everything on the lattice fit, and reads the payload from the re-aligned blocks, with
   blocks cut away by a crop treated as erasures.
5. **Strength.** The change is scaled so the marked image has PSNR 40.5 dB before
   clipping (>= 40 dB guaranteed); images need at least 256 pixels per side.

Detection tries the image as it stands first (a few milliseconds; this covers
re-encoding, resizing, blur, noise, brightness and contrast) and only then the template
search (crops, rotations).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

import numpy as np
import reedsolo
import scipy.ndimage as ndi
from PIL import Image

from artengine import Watermark, WatermarkReading, hookimpl

ARTENGINE_HOOK_API = "1.0"

WORK = 128  # working image side (pixels of the resolution-independent domain)
BLOCK = 8  # block side in working pixels
CELLS_PER_BLOCK = 2  # codeword bits carried per block
BAND = (1, 4)  # block-DCT frequencies u+v used by the cells
DATA_BYTES, TAG_BYTES, PARITY_BYTES = 6, 4, 6
PSNR_DB = 40.5  # target before clipping; never below PSNR_FLOOR_DB after it
PSNR_FLOOR_DB = 40.0
TEMPLATE_SHARE = 0.25  # fraction of the distortion budget spent on the template
TEMPLATE_PEAKS = 4
TEMPLATE_RADIUS = (0.30, 0.40)  # cycles per working pixel
DITHER = 0.125  # lattice offset: flat areas (statistic ~0) sit between the two lattices
MASK_WINDOW = 5  # blocks: neighbourhood of the perceptual mask
MASK_FLOOR_REL, MASK_FLOOR_ABS = 0.3, 1.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_NBLOCK = WORK // BLOCK
_SPECTRUM = 2 * WORK  # side of the image the template is searched in
_DECODE_TRIES = 4  # geometry hypotheses refined and decoded, best lattice fit first
_PROMISING_FIT = 0.15  # below this lattice fit a hypothesis is not worth refining (unmarked images
# stay below about 0.14; marked ones that decode start above 0.24)
_CLEAR_FIT = 0.35  # a hypothesis this good is refined and decoded at once
_ROTATIONS = [d for d in np.arange(-3, 3.01, 0.25) if abs(d) > 1e-9]  # fallback scan, degrees


def _mse(psnr_db: float) -> float:
    return 255.0 ** 2 / 10 ** (psnr_db / 10)


# ------------------------------------------------------------------------------ layout


def _dct_basis(n: int) -> np.ndarray:
    x = np.arange(n)
    basis = np.array([np.cos(np.pi * (2 * x + 1) * u / (2 * n)) for u in range(n)])
    basis[0] /= np.sqrt(2)
    return basis * np.sqrt(2 / n)


@dataclass(frozen=True)
class _Layout:
    """Everything the key determines: directions, bit placement, scrambling, template."""

    directions: np.ndarray  # (J, B, B) orthonormal
    cell_bit: np.ndarray  # (nb, nb, J) codeword bit index of each cell
    scramble: np.ndarray  # (L,) uint8
    freqs: np.ndarray  # (K, 2) template frequencies (fy, fx), cycles per working px
    phases: np.ndarray  # (K,)
    template: np.ndarray  # (WORK, WORK) unit RMS
    tag_key: bytes


@functools.lru_cache(maxsize=8)
def _layout(key: bytes) -> _Layout:
    seed = hmac.new(key, b"artengine stdm v1 layout", hashlib.sha256).digest()
    rng = np.random.default_rng(np.frombuffer(seed, np.uint32))
    c = _dct_basis(BLOCK)
    basis = np.array([np.outer(c[u], c[v]) for u in range(BLOCK) for v in range(BLOCK)
                      if BAND[0] <= u + v <= BAND[1]])
    q, _ = np.linalg.qr(rng.normal(size=(len(basis), len(basis))))
    directions = np.einsum("jk,kxy->jxy", q[:, :CELLS_PER_BLOCK].T, basis)
    bits = 8 * (DATA_BYTES + TAG_BYTES + PARITY_BYTES)
    cells = _NBLOCK * _NBLOCK * CELLS_PER_BLOCK
    cell_bit = np.empty(cells, np.int64)
    cell_bit[rng.permutation(cells)] = np.arange(cells) % bits
    scramble = rng.integers(0, 2, bits).astype(np.uint8)
    # One template peak per angular sector, so the peaks pin down rotation and aspect.
    angles = (np.arange(TEMPLATE_PEAKS) + rng.uniform(0.2, 0.8, TEMPLATE_PEAKS)) * np.pi / TEMPLATE_PEAKS
    radii = rng.uniform(*TEMPLATE_RADIUS, TEMPLATE_PEAKS)
    freqs = np.stack([radii * np.sin(angles), radii * np.cos(angles)], 1)
    phases = rng.uniform(0, 2 * np.pi, TEMPLATE_PEAKS)
    uu, vv = np.meshgrid(np.arange(WORK), np.arange(WORK), indexing="ij")
    template = sum(np.cos(2 * np.pi * (f[0] * uu + f[1] * vv) + ph) for f, ph in zip(freqs, phases))
    template /= np.sqrt(np.mean(template ** 2))
    tag_key = hmac.new(key, b"artengine stdm v1 tag", hashlib.sha256).digest()
    return _Layout(directions, cell_bit.reshape(_NBLOCK, _NBLOCK, CELLS_PER_BLOCK), scramble,
                   freqs, phases, template, tag_key)


_RS = reedsolo.RSCodec(PARITY_BYTES)


# ------------------------------------------------------------------------------ pixels


def _luma(rgb: np.ndarray) -> Image.Image:
    """The luma plane of ``(H, W, 3)`` pixels (uint8, or already float32)."""
    return Image.fromarray(np.asarray(rgb, dtype=np.float32) @ _LUMA, mode="F")


_LUMA_ROWS = 1 << 20  # pixels converted at a time by _luma_in_rows


def _luma_in_rows(rgb: np.ndarray) -> Image.Image:
    """:func:`_luma` of a large image a band of rows at a time, into the image's own
    buffer: the same conversion without its floating-point copies of the whole image (a
    48-megapixel scan: about 0.2 GB instead of 0.9). Detection's path; embedding keeps
    :func:`_luma`, whose bytes a job's images depend on."""
    height, width, _ = rgb.shape
    rows = max(1, _LUMA_ROWS // max(1, width))
    if rows >= height:
        return _luma(rgb)
    out = np.empty((height, width), np.float32)
    for top in range(0, height, rows):
        np.matmul(rgb[top: top + rows].astype(np.float32), _LUMA, out=out[top: top + rows])
    return Image.frombuffer("F", (width, height), out, "raw", "F", 0, 1)


def _working(luma: Image.Image, size: int = WORK) -> np.ndarray:
    """Antialiased resample to ``size`` x ``size``: the resolution-independent domain."""
    return np.asarray(luma.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def _mask(means: np.ndarray) -> np.ndarray:
    """Perceptual mask per block: local contrast of block means over a window, floored."""
    r = MASK_WINDOW // 2
    if min(means.shape) >= r:
        # np.pad(means, r, mode="symmetric"), by slicing: the same values, without np.pad's
        # per-call overhead (most of this function's time on 16 x 16 block means).
        rows = np.concatenate((means[r - 1::-1], means, means[:-r - 1:-1]), 0)
        padded = np.concatenate((rows[:, r - 1::-1], rows, rows[:, :-r - 1:-1]), 1)
    else:
        padded = np.pad(means, r, mode="symmetric")
    m1, m2 = _box(np.stack((padded, padded ** 2)), MASK_WINDOW)  # the same sums as one at a time
    var = np.maximum(m2 - m1 ** 2, 0)
    return np.sqrt(var + MASK_FLOOR_REL ** 2 * var.mean() + MASK_FLOOR_ABS ** 2)


def _box(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window (valid positions) of the last two axes."""
    c = np.zeros((*a.shape[:-2], a.shape[-2] + 1, a.shape[-1] + 1))
    np.cumsum(np.cumsum(a, -2), -1, out=c[..., 1:, 1:])
    return (c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]) / (k * k)


def _cells(canvas: np.ndarray, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Cell projections ``(gy, gx, J)`` and block masks ``(gy, gx)`` of a canvas whose
    block grid starts at its top-left pixel."""
    gy, gx = canvas.shape[0] // BLOCK, canvas.shape[1] // BLOCK
    blocks = canvas[: gy * BLOCK, : gx * BLOCK].reshape(gy, BLOCK, gx, BLOCK).transpose(0, 2, 1, 3)
    proj = np.einsum("abxy,jxy->abj", blocks, layout.directions)
    return proj, _mask(blocks.mean((2, 3)))


def _step(mask: np.ndarray, mse: float) -> float:
    """Global lattice scale so that the expected quantisation distortion equals ``mse``
    per working pixel (uniform error over a unit lattice cell has variance 1/12)."""
    return float(np.sqrt(12 * mse * BLOCK ** 2 / (CELLS_PER_BLOCK * np.mean(mask ** 2))))


def _fit(ratio: np.ndarray, step: float) -> float:
    """Lattice fit: 1 when every cell sits on a lattice point, ~0 for unmarked pixels."""
    return float(np.cos(4 * np.pi * (ratio / step - DITHER)).mean())


# ------------------------------------------------------------------------------ coding


def _tag(tag_key: bytes, payload: bytes) -> bytes:
    return hmac.new(tag_key, payload, hashlib.sha256).digest()[:TAG_BYTES]


@functools.lru_cache(maxsize=1024)
def _codeword(tag_key: bytes, payload: bytes) -> bytes:
    """The codeword of ``payload`` (payload, keyed tag, Reed-Solomon parity), unscrambled.
    Kept for the last payloads met: a job reads every mark back just after making it."""
    return bytes(_RS.encode(payload + _tag(tag_key, payload)))


def _codeword_bits(layout: _Layout, payload: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(_codeword(layout.tag_key, bytes(payload)), np.uint8)) ^ layout.scramble


def _decode(layout: _Layout, soft: np.ndarray) -> bytes | None:
    """Soft bit sums (positive: 0) -> payload, or None. Bytes with the weakest evidence
    are retried as erasures; every candidate must pass the keyed tag."""
    bits = (soft < 0).astype(np.uint8) ^ layout.scramble
    word = bytearray(np.packbits(bits).tobytes())
    # A mark read back unharmed: the word is the codeword of its own payload, which Reed-
    # Solomon decoding (no errors: every syndrome zero) would return as it stands, and
    # its tag is right. Anything else is decoded below as before.
    if hmac.compare_digest(_codeword(layout.tag_key, bytes(word[:DATA_BYTES])), bytes(word)):
        return bytes(word[:DATA_BYTES])
    reliability = np.abs(soft).reshape(-1, 8).min(1)
    weakest = np.argsort(reliability, kind="stable")
    for erasures in range(0, PARITY_BYTES + 1, 2):
        try:
            msg, _, _ = _RS.decode(word, erase_pos=sorted(weakest[:erasures].tolist()) or None)
        except reedsolo.ReedSolomonError:
            continue
        payload, tag = bytes(msg[:DATA_BYTES]), bytes(msg[DATA_BYTES:])
        if hmac.compare_digest(tag, _tag(layout.tag_key, payload)):
            return payload
    return None


# ------------------------------------------------------------------------------ embedding


def embed_pixels(rgb: np.ndarray, payload: bytes, key: bytes) -> np.ndarray:
    """Mark ``(H, W, 3)`` uint8 pixels; returns new pixels."""
    layout = _layout(key)
    height, width, _ = rgb.shape
    mse = _mse(PSNR_DB)
    template = np.sqrt(TEMPLATE_SHARE * mse) * layout.template
    base = rgb.astype(np.float32)
    host = _working(_luma(base)) + template
    proj, mask = _cells(host, layout)
    step = _step(mask, (1 - TEMPLATE_SHARE) * mse)
    bits = _codeword_bits(layout, payload)[layout.cell_bit]
    ratio = proj / (step * mask[..., None])
    offset = bits / 2 + DITHER
    change = step * mask[..., None] * (offset + np.round(ratio - offset) - ratio)
    delta = template + np.einsum("abj,jxy->axby", change, layout.directions).reshape(WORK, WORK)
    up = np.array(Image.fromarray(delta.astype(np.float32), mode="F")
                  .resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    # Rounding to integers adds about 1/12 of squared error; the rest is the mark's.
    up *= np.float32(np.sqrt((mse - 1 / 12) / np.mean(np.square(up, dtype=np.float64))))
    rounded = np.empty_like(base)
    for _ in range(4):
        # The same float32 operations as clip(rint(base + up)), in place. The mark is
        # added one channel at a time: broadcast over the channels, numpy's inner loop
        # ran over 3 values at a time (a third of the time).
        for channel in range(3):
            np.add(base[..., channel], up, out=rounded[..., channel])
        np.rint(rounded, out=rounded)
        np.clip(rounded, 0, 255, out=rounded)
        out = rounded.astype(np.uint8)
        np.subtract(rounded, base, out=rounded)
        # The mean squared error: the differences are integers, so their squares (exact
        # in float32) sum exactly in float64 in any order, to the mean numpy's float64
        # squares gave, without their float64 copy.
        np.square(rounded, out=rounded)
        err = float(rounded.sum(dtype=np.float64)) / rounded.size
        if err <= _mse(PSNR_FLOOR_DB):
            return out
        up *= np.float32(0.97)
    return out


# ------------------------------------------------------------------------------ detection


_STEP_SCALES = np.exp(np.linspace(-0.3, 0.3, 61))  # the lattice scales tried, around the expected one


def _lattice_read(proj: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
    """Per cell of the ``valid`` blocks, how close it sits to a 0-lattice point (+1) or a
    1-lattice point (-1); and the lattice fit. The lattice scale is re-fitted within
    +-35 % (the mask estimate drifts a little under heavy processing)."""
    ratio = (proj / mask[..., None])[valid]
    base = _step(mask[valid], (1 - TEMPLATE_SHARE) * _mse(PSNR_DB))
    steps = base * _STEP_SCALES
    # The scan only picks the step, so it runs in float32: numpy's float64 cosine is about
    # ten times slower here and took most of a detection's time. The chosen step's fit and
    # reads are float64, as before.
    scan = (ratio.astype(np.float32)[None] / steps.astype(np.float32)[:, None, None] - np.float32(DITHER))
    scan *= np.float32(4 * np.pi)
    step = float(steps[int(np.argmax(np.cos(scan).mean((1, 2), dtype=np.float64)))])
    return np.cos(2 * np.pi * (ratio / step - DITHER)), _fit(ratio, step)


def _soft_bits(layout: _Layout, z: np.ndarray, valid: np.ndarray,
               origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Soft evidence per codeword bit from cell reads ``z`` of the ``valid`` blocks of a
    grid whose top-left block is original block ``origin``; and (bit, z) per cell."""
    gy, gx = valid.shape
    cell_bit = layout.cell_bit[origin[0]: origin[0] + gy, origin[1]: origin[1] + gx][valid]
    soft = np.bincount(cell_bit.ravel(), weights=z.ravel(), minlength=layout.scramble.size)
    return soft, np.stack([cell_bit.ravel(), z.ravel()])


def _reading(layout: _Layout, payload: bytes | None, fit: float, cells: np.ndarray,
             path: str, soft: np.ndarray | None = None, **extra: object) -> WatermarkReading:
    details: dict[str, object] = {"path": path, "lattice_fit": round(fit, 4), **extra}
    if soft is not None:
        # Hard decisions on the payload bits before error correction: unverified, for
        # measuring bit accuracy only (the code is systematic: the payload comes first).
        raw = np.packbits(((soft < 0).astype(np.uint8) ^ layout.scramble)[: 8 * DATA_BYTES])
        details["raw_payload"] = raw.tobytes().hex()
    if payload is None:
        return WatermarkReading(False, None, 0.0, reason="no readable mark", details=details)
    expected = 1 - 2 * _codeword_bits(layout, payload).astype(np.float64)  # +1 for bit 0
    agreement = float(np.mean(np.sign(cells[1]) == expected[cells[0].astype(np.int64)]))
    details["cell_agreement"] = round(agreement, 4)
    return WatermarkReading(True, payload, max(0.0, min(1.0, 2 * agreement - 1)), details=details)


def detect_pixels(rgb: np.ndarray, key: bytes, *, search: bool = True) -> WatermarkReading:
    """Read the payload from ``(H, W, 3)`` uint8 pixels."""
    layout = _layout(key)
    luma = _luma_in_rows(rgb)
    received = _working(luma)
    proj, mask = _cells(received, layout)
    valid = np.ones(mask.shape, bool)
    z, fit = _lattice_read(proj, mask, valid)
    soft, cells = _soft_bits(layout, z, valid, (0, 0))
    payload = _decode(layout, soft)
    as_is = _reading(layout, payload, fit, cells, "as is", soft)
    if payload is not None or not search:
        return as_is
    return _resynchronise(layout, luma, received) or as_is


# ------------------------------------------------------------------------------ resynchronisation


def _spectrum(luma: Image.Image) -> np.ndarray:
    """Whitened magnitude spectrum (DC centred) of a Hann-windowed 256x256 resample."""
    img = _working(luma, _SPECTRUM)
    window = np.hanning(_SPECTRUM)
    mag = np.abs(np.fft.fftshift(np.fft.fft2((img - img.mean()) * np.outer(window, window))))
    return mag / (ndi.uniform_filter(mag, 9) + 1e-9)


def _template_candidates(layout: _Layout, spectrum: np.ndarray, top: int = 3) -> list[np.ndarray]:
    """Frequency maps (2x2) that move the template peaks onto the strongest spectral
    evidence. A grid search over scale and rotation finds where the peaks are; each hit
    gives three hypotheses: the grid's similarity itself, and least-squares fits of the
    sub-bin peak positions as a similarity and as a general linear map (aspect, shear).
    The lattice fit decides between them later."""
    scales = np.arange(0.95, 1.35, 0.002)
    angles = np.deg2rad(np.arange(-5, 5.001, 0.1))
    cos, sin = np.cos(angles), np.sin(angles)
    fy, fx = layout.freqs[:, 0], layout.freqs[:, 1]
    centre = _SPECTRUM / 2
    rows = (fy * cos[:, None] - fx * sin[:, None])[None] / scales[:, None, None] * WORK + centre
    cols = (fy * sin[:, None] + fx * cos[:, None])[None] / scales[:, None, None] * WORK + centre
    score = ndi.map_coordinates(spectrum, [rows.ravel(), cols.ravel()], order=1).reshape(rows.shape).sum(-1)
    peaks = np.argwhere(score == ndi.maximum_filter(score, size=11))
    order = np.argsort(-score[peaks[:, 0], peaks[:, 1]])[:top]
    maps = []
    f = layout.freqs * WORK
    for i, j in peaks[order]:
        c, s_ = cos[j] / scales[i], sin[j] / scales[i]
        maps.append(np.array([[c, -s_], [s_, c]]))
        predicted = np.stack([rows[i, j], cols[i, j]], 1)
        measured = np.array([_peak(spectrum, r, c) for r, c in predicted]) - centre
        # similarity [[a, -b], [b, a]]: rows a*fy - b*fx, cols b*fy + a*fx
        design = np.concatenate([np.stack([f[:, 0], -f[:, 1]], 1), np.stack([f[:, 1], f[:, 0]], 1)])
        (a, b), *_ = np.linalg.lstsq(design, np.concatenate([measured[:, 0], measured[:, 1]]), rcond=None)
        maps.append(np.array([[a, -b], [b, a]]))
        general, *_ = np.linalg.lstsq(f, measured, rcond=None)
        maps.append(general.T)
    return maps


def _peak(spectrum: np.ndarray, row: float, col: float) -> tuple[float, float]:
    """Strongest bin within 2 bins of (row, col), refined to sub-bin by a parabola."""
    r0, c0 = int(round(row)), int(round(col))
    win = spectrum[r0 - 2: r0 + 3, c0 - 2: c0 + 3]
    dr, dc = np.unravel_index(int(np.argmax(win)), win.shape)
    r, c = r0 - 2 + dr, c0 - 2 + dc

    def vertex(a: float, b: float, d: float) -> float:
        curve = a - 2 * b + d
        return 0.0 if curve >= 0 else 0.5 * (a - d) / curve

    return (r + vertex(spectrum[r - 1, c], spectrum[r, c], spectrum[r + 1, c]),
            c + vertex(spectrum[r, c - 1], spectrum[r, c], spectrum[r, c + 1]))


def _canvas(source: np.ndarray, transform: np.ndarray, shift: np.ndarray, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Resample the received working image into original working coordinates:
    canvas pixel u shows received pixel ``transform @ (u + shift - c) + c``. ``source`` is
    the spline-filtered image for ``order`` 3 (accurate), the image itself for ``order`` 1
    (a third faster, slightly blurred: good enough to rank hypotheses). Returns the canvas
    and which of its blocks lie inside the received image."""
    centre = (WORK - 1) / 2
    side = int(WORK / np.sqrt(abs(np.linalg.det(transform))))
    side = max(BLOCK, min(side, WORK + BLOCK))
    offset = centre - transform @ (centre - shift)
    canvas = ndi.affine_transform(source, transform, offset=offset, output_shape=(side, side),
                                  order=order, prefilter=False, mode="nearest")
    g = side // BLOCK
    corners = np.array([(dy, dx) for dy in (0, BLOCK - 1) for dx in (0, BLOCK - 1)], float)
    starts = np.stack(np.meshgrid(np.arange(g) * BLOCK, np.arange(g) * BLOCK, indexing="ij"), -1)
    pts = starts[:, :, None, :] + corners  # (g, g, 4, 2)
    mapped = pts @ transform.T + offset
    inside = ((mapped >= -0.5) & (mapped <= WORK - 0.5)).all((-1, -2))
    return canvas, inside


def _template_shifts(layout: _Layout, canvas: np.ndarray, top: int = 12) -> list[np.ndarray]:
    """Candidate canvas shifts that put block boundaries on multiples of BLOCK, from the
    template sinusoids' phases (several maxima: four sinusoids leave some ambiguity)."""
    rows, cols = np.arange(canvas.shape[0]), np.arange(canvas.shape[1])
    centred = canvas - canvas.mean()
    measured = []
    for f in layout.freqs:  # phase of sum C[u, v] exp(-2 pi i (f0 u + f1 v)), in real arithmetic
        cy, sy = np.cos(2 * np.pi * f[0] * rows), np.sin(2 * np.pi * f[0] * rows)
        cx, sx = np.cos(2 * np.pi * f[1] * cols), np.sin(2 * np.pi * f[1] * cols)
        ccx, csx = centred @ cx, centred @ sx
        measured.append(np.arctan2(-(sy @ ccx + cy @ csx), cy @ ccx - sy @ csx))
    grid = np.arange(-24, 24, 0.1)
    # sum_k cos(measured_k - phase_k - 2 pi f_k . d), as separable complex exponentials:
    # Re(a b) = Re a Re b - Im a Im b, so the whole grid is one real product of a
    # (grid, 2K) and a (2K, grid) matrix rather than K complex outer products.
    rows_k, cols_k = [], []
    for k, f in enumerate(layout.freqs):
        a = np.exp(1j * (measured[k] - layout.phases[k])) * np.exp(-2j * np.pi * f[0] * grid)
        b = np.exp(-2j * np.pi * f[1] * grid)
        rows_k += [a.real, -a.imag]
        cols_k += [b.real, b.imag]
    agreement = np.stack(rows_k, 1) @ np.stack(cols_k, 0)
    peaks = np.argwhere(agreement == ndi.maximum_filter(agreement, size=5))
    order = np.argsort(-agreement[peaks[:, 0], peaks[:, 1]])[:top]
    # The canvas shows original pixel u + offset; shifting by -offset (mod BLOCK) aligns blocks.
    return [np.array([-grid[p[0]] % BLOCK, -grid[p[1]] % BLOCK]) for p in peaks[order]]


def _grid_fit(layout: _Layout, source: np.ndarray, transform: np.ndarray, shift: np.ndarray, order: int = 3):
    """Lattice fit of the canvas for one geometry hypothesis, with its cells."""
    canvas, inside = _canvas(source, transform, shift, order)
    proj, mask = _cells(canvas, layout)
    if inside.sum() < 16:
        return -1.0, proj, mask, inside
    ratio = proj[inside] / mask[inside][..., None]
    return _fit(ratio, _step(mask[inside], (1 - TEMPLATE_SHARE) * _mse(PSNR_DB))), proj, mask, inside


def _refine(layout: _Layout, spline: np.ndarray, transform: np.ndarray, shift: np.ndarray, fit: float):
    """Coordinate ascent of the lattice fit over the linear map and the shift."""
    params = np.concatenate([transform.ravel(), shift])
    steps = np.array([0.002] * 4 + [0.1, 0.1])
    for _ in range(3):
        for i in range(6):
            for sign in (1, -1):
                trial = params.copy()
                trial[i] += sign * steps[i]
                f = _grid_fit(layout, spline, trial[:4].reshape(2, 2), trial[4:])[0]
                if f > fit:
                    params, fit = trial, f
                    break
        steps /= 2
    return params[:4].reshape(2, 2), params[4:], fit


def _resynchronise(layout: _Layout, luma: Image.Image, received: np.ndarray) -> WatermarkReading | None:
    """Template path: hypotheses for the geometry, ranked by lattice fit; the promising
    ones are refined and decoded, best first, until one passes the integrity check (a
    hypothesis that fits clearly is decoded at once). Returns the best failed reading, or
    None when the template gave no hypothesis."""
    spline = ndi.spline_filter(received, order=3)
    hypotheses: list[tuple[float, np.ndarray, np.ndarray]] = []
    tried: list[tuple[float, np.ndarray, np.ndarray]] = []
    best = None

    def attempt(hypothesis: tuple[float, np.ndarray, np.ndarray]) -> WatermarkReading:
        nonlocal best
        tried.append(hypothesis)
        fit, transform, shift = hypothesis
        reading = _decode_at(layout, spline, *_refine(layout, spline, transform, shift, fit))
        best = best or reading
        return reading

    transforms: list[np.ndarray] = []
    for fmap in _template_candidates(layout, _spectrum(luma)):
        try:
            transform = np.linalg.inv(fmap).T  # spatial map is the inverse transpose
        except np.linalg.LinAlgError:
            continue
        if not 0.5 < abs(np.linalg.det(transform)) < 2:
            continue
        if any(np.abs(transform - t).max() < 0.0015 for t in transforms):
            continue  # the same geometry found twice
        transforms.append(transform)
        start, _ = _canvas(received, transform, np.zeros(2), order=1)
        for shift in _template_shifts(layout, start):
            hypothesis = (_grid_fit(layout, received, transform, shift, order=1)[0], transform, shift)
            hypotheses.append(hypothesis)
            if hypothesis[0] >= _CLEAR_FIT and len(tried) < _DECODE_TRIES:
                reading = attempt(hypothesis)
                if reading.detected:
                    return reading
    if not any(h[0] >= _PROMISING_FIT for h in hypotheses):
        # No usable template evidence (busy textures can drown its peaks): fall back to
        # small rotations about the centre, the one geometry cheap enough to scan.
        for degrees in _ROTATIONS:
            a = np.deg2rad(degrees)
            transform = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            hypotheses.append((_grid_fit(layout, received, transform, np.zeros(2), order=1)[0],
                               transform, np.zeros(2)))
    hypotheses.sort(key=lambda h: -h[0])
    for hypothesis in hypotheses:
        if len(tried) >= _DECODE_TRIES or hypothesis[0] < _PROMISING_FIT:
            break
        if any(hypothesis is t for t in tried):
            continue
        reading = attempt(hypothesis)
        if reading.detected:
            return reading
    return best


def _decode_at(layout: _Layout, spline: np.ndarray, transform: np.ndarray, shift: np.ndarray,
               fit: float) -> WatermarkReading:
    """Decode the re-aligned canvas. Which original block the canvas's first block is
    (a crop or rotation moves it by whole blocks) is the offset whose cells agree most on
    their bits; canvas blocks that fall outside the original grid are ignored."""
    _, proj, mask, inside = _grid_fit(layout, spline, transform, shift)
    z_inside, fit = _lattice_read(proj, mask, inside)
    z = np.zeros(proj.shape)
    z[inside] = z_inside
    gy, gx = mask.shape
    best = None
    for oy in range(-3, _NBLOCK - gy + 4):
        for ox in range(-3, _NBLOCK - gx + 4):
            rows = slice(max(0, -oy), min(gy, _NBLOCK - oy))
            cols = slice(max(0, -ox), min(gx, _NBLOCK - ox))
            if rows.start >= rows.stop or cols.start >= cols.stop:
                continue
            valid = inside[rows, cols]
            if valid.sum() < 16:
                continue
            soft, cells = _soft_bits(layout, z[rows, cols][valid], valid, (oy + rows.start, ox + cols.start))
            strength = float(np.abs(soft).sum())
            if best is None or strength > best[0]:
                best = (strength, soft, cells)
    if best is None:
        return _reading(layout, None, fit, np.zeros((2, 0)), "template")
    _, soft, cells = best
    geometry = {"transform": np.round(transform, 4).tolist(), "shift": np.round(shift, 2).tolist()}
    return _reading(layout, _decode(layout, soft), fit, cells, "template", soft, **geometry)


# ------------------------------------------------------------------------------ the component


class SpreadTransformWatermark(Watermark):
    """Keyed STDM watermark with Reed-Solomon + tag and template resynchronisation (48-bit
    payload, PSNR >= 40 dB, images at least 256 px per side)."""

    name = "stdm"
    version = 1
    description = ("keyed spread-transform dither modulation in a 128x128 resolution-independent "
                   "block-DCT domain with perceptual masking; 48-bit payload, Reed-Solomon(16,10) "
                   "+ 32-bit keyed tag; Fourier template for crops and rotations; PSNR >= 40 dB")
    payload_bytes = DATA_BYTES
    min_side = 256
    min_detect_side = 64

    def embed_rgb(self, rgb: np.ndarray, payload: bytes) -> np.ndarray:
        return embed_pixels(rgb, payload, self.key)

    def detect_rgb(self, rgb: np.ndarray, *, search: bool = True) -> WatermarkReading:
        return detect_pixels(rgb, self.key, search=search)


@hookimpl
def artengine_watermarks() -> list[type[Watermark]]:
    return [SpreadTransformWatermark]
