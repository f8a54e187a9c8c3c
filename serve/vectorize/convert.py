"""vtracer conversion, rendering back with cairosvg, and SSIM per the EVAL.md protocol.

Renderer: cairosvg (pinned to 2.9.1 in pyproject), at exactly the input size, on white. vtracer's SVG carries
``width``/``height`` but no ``viewBox``, so the output size is given to the renderer explicitly.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass

import numpy as np
import vtracer
from PIL import Image

from serve.vectorize.params import VtracerParams

logger = logging.getLogger(__name__)

_PATH = re.compile(rb"<path\b")

LIBRARIES = ("cairosvg", "skimage.metrics")
"""What rendering and SSIM load on first use (about 2 s of import): the tracing workers preload them; the Gateway,
the residency and Serve's build of the app, which import this package for its names, never load them."""


@dataclass(frozen=True)
class Conversion:
    """One vtracer result."""

    svg: str
    n_bytes: int
    n_paths: int
    seconds: float


def _bmp_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


def vectorize(pixels: np.ndarray, params: VtracerParams) -> Conversion:
    """Convert RGB ``pixels`` to SVG with ``params``.

    In binary colour mode vtracer thresholds the red channel only; the image is first turned into luminance
    (ITU-R 601) in all three channels so the threshold means light vs dark.

    Args:
        pixels: ``(H, W, 3)`` uint8 RGB.
        params: vtracer parameters.

    Returns:
        The SVG text with its UTF-8 size, path count and conversion wall time.
    """
    start = time.perf_counter()
    if params.colormode == "binary":
        grey = (pixels @ np.asarray([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
        pixels = np.repeat(grey[:, :, None], 3, axis=2)
    svg = vtracer.convert_raw_image_to_svg(
        _bmp_bytes(np.ascontiguousarray(pixels)), img_format="bmp", **params.kwargs()
    )
    seconds = time.perf_counter() - start
    data = svg.encode("utf-8")
    return Conversion(svg=svg, n_bytes=len(data), n_paths=len(_PATH.findall(data)), seconds=seconds)


def render(svg: str, width: int, height: int) -> np.ndarray:
    """Render ``svg`` at exactly ``width`` x ``height`` with cairosvg, flattened onto white, as RGB uint8."""
    import cairosvg  # one of LIBRARIES

    png = cairosvg.svg2png(
        bytestring=svg.encode("utf-8"), output_width=width, output_height=height, background_color="white"
    )
    image = Image.open(io.BytesIO(png))
    if image.size != (width, height):
        image = image.resize((width, height))
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[:, :, 3:4] / 255.0
    return np.clip(rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two RGB uint8 images with the fixed EVAL.md settings."""
    from skimage.metrics import structural_similarity  # one of LIBRARIES

    return float(
        structural_similarity(
            a,
            b,
            channel_axis=2,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


@dataclass(frozen=True)
class Scored:
    """A conversion scored against its input."""

    ssim: float
    n_bytes: int
    n_paths: int
    convert_s: float
    total_s: float


def score(pixels: np.ndarray, params: VtracerParams) -> Scored:
    """Convert, render back and compare (EVAL.md steps 2-5)."""
    start = time.perf_counter()
    result = vectorize(pixels, params)
    rendered = render(result.svg, pixels.shape[1], pixels.shape[0])
    value = ssim(pixels, rendered)
    return Scored(value, result.n_bytes, result.n_paths, result.seconds, time.perf_counter() - start)
