"""Crafted files for the fault-matrix tests, shared by the test modules that need them."""
from __future__ import annotations

import struct
import zlib


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is absent)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
