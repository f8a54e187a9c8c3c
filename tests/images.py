"""Images for tests, in one place: encoded PIL images, header-only PNGs (decompression-bomb probes), icons."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    """``image`` encoded as ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: decoding pixels would fail or allocate."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def icon_pixels(height: int = 96, width: int | None = None):
    """A two-colour flat icon on white, ``(height, width, 3)`` uint8: a blue square with an orange one over it."""
    width = width or height
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[height // 8 : 5 * height // 8, width // 8 : 5 * width // 8] = (30, 120, 220)
    pixels[2 * height // 5 : 9 * height // 10, 2 * width // 5 : 9 * width // 10] = (230, 60, 40)
    return pixels


def icon_png(size: int = 96) -> bytes:
    """:func:`icon_pixels` encoded as PNG."""
    return encode(Image.fromarray(icon_pixels(size)))


def dev_icon_png(folder) -> bytes:
    """The first PNG of ``folder`` (a shared data set, when present), else :func:`icon_png`."""
    icons = sorted(folder.glob("*.png")) if folder.exists() else []
    return icons[0].read_bytes() if icons else icon_png(128)


def write_icons(folder, count: int = 6, size: int = 96, seed: int = 0):
    """``count`` random flat icons (three coloured rectangles on white) as PNG files in ``folder``; returns it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.full((size, size, 3), 255, dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, size - 26, 2)
            pixels[y : y + rng.integers(8, 26), x : x + rng.integers(8, 26)] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder
