"""An encoded raster image decoded into an RGB ``uint8`` array on white, its size checked (both pipelines).

Limits are checked from the header, before any pixel is decoded, and without touching PIL's global
``Image.MAX_IMAGE_PIXELS``. Animated images (GIF, APNG, WebP) are reduced to their first frame. CMYK, 16-bit,
palette, grey and alpha images are converted to RGB; alpha is flattened onto white.
"""

from __future__ import annotations

import base64
import io
import logging
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from serve.errors import InvalidInput, wire

logger = logging.getLogger(__name__)

MAX_PIXELS = 4_194_304
"""2048 x 2048: vtracer's cost grows with the pixels (a 16-megapixel upload took 6.4 s of CPU), so it is bounded."""
MAX_SIDE = 4096
MIN_SIDE = 8
"""Images thinner than this carry no shape to trace (and no gradient for the features): refused with a 400."""


class ImageRejected(InvalidInput, ValueError):
    """An image that does not decode or breaks a size limit: a 400 (413 past a size limit) naming its field.

    An Easel error wherever it is raised, so no route or RPC answers an undecodable image with anything else.
    """

    def __init__(self, message: str, field: str = "image", status: int = 400) -> None:
        super().__init__(message, field)
        self.status = status
        self.grpc_code, self.kind = wire(status)

    def __reduce__(self):
        return (type(self), (self.message, self.field, self.status))


def check_size(width: int, height: int, field: str = "image", max_pixels: int = MAX_PIXELS) -> None:
    """Raise :class:`ImageRejected` when a ``width`` x ``height`` image breaks the size limits.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        field: Request field named in the error.
        max_pixels: The most pixels accepted.
    """
    if width <= 0 or height <= 0:
        raise ImageRejected(f"{field}: image has zero size ({width}x{height})", field, 400)
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(
            f"{field}: image is {width}x{height}; each side must be at least {MIN_SIDE} pixels", field, 400
        )
    if max(width, height) > MAX_SIDE:
        raise ImageRejected(
            f"{field}: image is {width}x{height}; the longest side may be at most {MAX_SIDE} pixels",
            field,
            413,
        )
    if width * height > max_pixels:
        raise ImageRejected(
            f"{field}: image has {width * height} pixels; at most {max_pixels} ({max_pixels / 1e6:.1f} megapixels) "
            "are accepted",
            field,
            413,
        )


def header_size(data: bytes, field: str = "image", max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) ``data``'s header says, its limits checked, no pixel decoded (what admission prices)."""
    if not data:
        raise ImageRejected(f"{field}: empty upload", field, 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
    except Exception as error:  # noqa: BLE001 - whatever PIL raises for bytes that are no image
        raise ImageRejected(f"{field}: not a readable image (PNG, JPEG, WebP, GIF, ...)", field, 400) from error
    check_size(*size, field, max_pixels)
    return size


def decode_image(data: bytes, field: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``data`` into an ``(H, W, 3)`` RGB ``uint8`` array, alpha flattened onto white.

    The header is read and the size limits checked before pixels are decoded. Animated images yield their first
    frame.

    Args:
        data: The encoded image (PNG, JPEG, GIF, WebP, BMP, TIFF...).
        field: Request field named in errors.
        max_pixels: The most pixels accepted (vectorize's limit by default).

    Returns:
        The RGB pixels.

    Raises:
        ImageRejected: Empty, not an image, truncated, or over the limits (413).
    """
    pixels = to_rgb(_loaded(data, field, max_pixels))
    check_size(pixels.shape[1], pixels.shape[0], field, max_pixels)
    return pixels


def decoded_size(data: bytes, field: str = "image", max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) of ``data`` once its pixels are decoded, as :func:`decode_image` checks it (no RGB made).

    What an image another service sent is checked with (:mod:`serve.remote.answer_images`): the header's limits
    first, then every pixel of its first frame decoded. Raises :class:`ImageRejected` as :func:`decode_image` does.
    """
    with _loaded(data, field, max_pixels) as image:
        return image.size


def _loaded(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """``data`` opened, its first frame's pixels decoded, its size checked from the header first and then again."""
    if not data:
        raise ImageRejected(f"{field}: empty upload", field, 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_size(*image.size, field, max_pixels)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            check_size(*image.size, field, max_pixels)  # what was decoded, not only what the header claimed
    except ImageRejected:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"{field}: image over {max_pixels} pixels ({error})", field, 413) from error
    except UnidentifiedImageError as error:  # PIL's message names only its file object
        raise ImageRejected(f"{field}: not a readable image (PNG, JPEG, WebP, GIF, ...)", field, 400) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"{field}: truncated or corrupt image ({error})", field, 400) from error
    return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to RGB ``uint8``, flattening alpha (or palette transparency) onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if pixels.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        grey = np.clip(pixels / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        flat = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(flat + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def load_image(path, field: str = "image") -> np.ndarray:
    """Read and decode the image file at ``path`` (see :func:`decode_image`)."""
    with open(path, "rb") as handle:
        return decode_image(handle.read(), field=field)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB pixels so the longest side is ``size`` (Lanczos); unchanged if already that size."""
    height, width = pixels.shape[:2]
    if max(height, width) == size:
        return pixels
    scale = size / max(height, width)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(target, Image.Resampling.LANCZOS), dtype=np.uint8)


_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def png_base64(pixels: np.ndarray) -> str:
    """``pixels`` (HWC ``uint8``) as the API's base64 PNG."""
    return base64.b64encode(encode_image(pixels, "png")).decode()


def encode_image(pixels: np.ndarray, output_format: str, quality: int | None = None) -> bytes:
    """Encode an HWC uint8 image as png, jpeg or webp (``quality``: jpeg's or webp's, in percent; None: Pillow's)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, format=_PIL_FORMATS[output_format], **({} if quality is None else {"quality": quality})
    )
    return buffer.getvalue()
