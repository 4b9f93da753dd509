"""Image bytes the tests share: encoded Pillow images and a decompression bomb's header."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def tiff_with_a_rational_strip_offset() -> bytes:
    """A 2x2 TIFF whose StripOffsets tag is a RATIONAL: Pillow's decoder raises TypeError, not OSError, on it."""
    entries = [(256, 3, 2), (257, 3, 2), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 5, None), (277, 3, 1),
               (278, 3, 2), (279, 4, 4)]  # (tag, type: 3 SHORT / 4 LONG / 5 RATIONAL, value)
    rational_at = 8 + 2 + 12 * len(entries) + 4  # right after the one IFD
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack(
            "<HHII", tag, kind, 1, value if kind == 4 else rational_at)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<II", 1, 2) + bytes(4)


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG that declares huge dimensions (a decompression bomb's header) and holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000)))
            + chunk(b"IEND", b""))
