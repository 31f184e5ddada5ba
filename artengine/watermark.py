"""The watermark API: what watermark plugins implement.

A watermark scheme hides a short payload in an image's pixels with a secret key and reads it
back after ordinary handling (re-encoding, resizing, cropping). artengine uses the payload as
the key of the provenance ledger, so an image whose metadata was stripped can still be traced
(see :mod:`artengine.provenance`).

A plugin registers subclasses of :class:`Watermark` through the ``artengine_watermarks`` hook.
Subclasses work on RGB pixels only (:meth:`Watermark.embed_rgb`, :meth:`Watermark.detect_rgb`);
this base class splits off any alpha channel with :func:`artengine.to_rgb` and puts it back
with :func:`artengine.restore_alpha`, checks sizes and payload lengths, and turns every
failure on foreign input into a reading that says "not detected", never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .errors import InputError
from .io import restore_alpha, to_rgb


@dataclass(frozen=True)
class WatermarkReading:
    """What a detector found in one image.

    ``detected`` is True only when a complete payload passed the scheme's integrity check;
    ``payload`` is then its bytes. ``confidence`` (0..1) says how cleanly the mark was read:
    1.0 for an untouched image, lower as processing damaged it; consumers treat a detection
    below their threshold as "unknown", never as a pass. ``reason`` explains a miss in one
    line; ``details`` holds scheme-specific figures (JSON-serialisable).
    """

    detected: bool
    payload: bytes | None
    confidence: float
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def payload_hex(self) -> str | None:
        return self.payload.hex() if self.payload is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"detected": self.detected, "payload": self.payload_hex,
                "confidence": round(float(self.confidence), 4), "reason": self.reason,
                "details": self.details}


class Watermark:
    """Base class of invisible watermark schemes, registered via ``artengine_watermarks``.

    Subclasses set ``name`` (recorded in manifests), ``version``, ``description``,
    ``payload_bytes`` (the fixed payload length), ``min_side`` (the smallest image side the
    scheme can mark robustly; smaller images are refused with an :class:`InputError`, so a
    pipeline upsamples to its output size first) and ``min_detect_side``, and implement
    :meth:`embed_rgb` and :meth:`detect_rgb`. An instance is bound to one secret key.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""
    payload_bytes: ClassVar[int] = 6
    min_side: ClassVar[int] = 256
    min_detect_side: ClassVar[int] = 64

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise InputError(f"watermark {self.name}: the key must be at least 16 bytes")
        self.key = bytes(key)

    # ------------------------------------------------------------------ for subclasses

    def embed_rgb(self, rgb: np.ndarray, payload: bytes) -> np.ndarray:
        """Return marked ``(H, W, 3)`` uint8 pixels carrying ``payload``."""
        raise NotImplementedError

    def detect_rgb(self, rgb: np.ndarray, *, search: bool = True) -> WatermarkReading:
        """Read the mark from ``(H, W, 3)`` uint8 pixels. ``search=False`` skips any
        (slower) geometric resynchronisation and only reads the image as it stands."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    def embed(self, image: Image.Image, payload: bytes) -> Image.Image:
        """Mark ``image`` (any mode) with ``payload``; alpha is set aside and restored.

        Raises :class:`InputError` for a payload of the wrong length or an image smaller
        than ``min_side`` on either side.
        """
        if not isinstance(payload, (bytes, bytearray)) or len(payload) != self.payload_bytes:
            raise InputError(f"watermark {self.name}: payload must be exactly {self.payload_bytes} "
                             f"bytes ({2 * self.payload_bytes} hex digits)")
        width, height = image.size
        if min(width, height) < self.min_side:
            raise InputError(f"watermark {self.name}: image is {width}x{height}; the mark needs at least "
                             f"{self.min_side} pixels on each side (upsample to the output size first)")
        rgb, alpha = to_rgb(image)
        marked = self.embed_rgb(np.asarray(rgb, dtype=np.uint8), bytes(payload))
        return restore_alpha(Image.fromarray(marked, mode="RGB"), alpha)

    def detect(self, image: Image.Image, *, search: bool = True) -> WatermarkReading:
        """Read the mark from ``image`` (any mode). Never raises on foreign pixels: an
        image too small to carry a mark gives a reading with ``detected=False``."""
        width, height = image.size
        if min(width, height) < self.min_detect_side:
            return WatermarkReading(False, None, 0.0,
                                    reason=f"image is {width}x{height}, too small to carry a mark "
                                    f"(at least {self.min_detect_side} px per side)")
        rgb, _ = to_rgb(image)
        return self.detect_rgb(np.asarray(rgb, dtype=np.uint8), search=search)
