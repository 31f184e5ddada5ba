"""Crafted files for the fault-matrix tests, shared by the test modules that need them."""
from __future__ import annotations

import struct
import zlib


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes, crc_of: bytes | None = None) -> bytes:
    """One PNG chunk: length, type, ``data`` and the CRC of the type and ``crc_of`` (by
    default ``data`` itself: a right CRC)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + (
        data if crc_of is None else crc_of)))


def png_of(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these ``(type, data)`` chunks, every CRC right."""
    return PNG_SIGNATURE + b"".join(png_chunk(kind, data) for kind, data in chunks)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as ``(type, data)``, in order."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        length = int.from_bytes(data[pos: pos + 4], "big")
        out.append((data[pos + 4: pos + 8], data[pos + 8: pos + 8 + length]))
        pos += 12 + length
    return out


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is absent)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return png_of([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\0" * 16)), (b"IEND", b"")])
