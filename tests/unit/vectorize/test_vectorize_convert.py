import numpy as np

from serve.vectorize.convert import render, score, ssim, vectorize
from serve.vectorize.params import DEFAULTS, PRESETS


def _icon() -> np.ndarray:
    pixels = np.full((64, 96, 3), 255, dtype=np.uint8)
    pixels[10:50, 20:70] = (200, 30, 30)
    pixels[20:40, 30:60] = (20, 20, 160)
    return pixels


def test_ssim_of_image_with_itself_is_one():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert ssim(pixels, pixels) == 1.0
    assert ssim(pixels, 255 - pixels) < 0.5


def test_vectorize_and_render_at_input_size():
    pixels = _icon()
    result = vectorize(pixels, DEFAULTS)
    assert result.svg.startswith("<?xml") and "viewBox" not in result.svg
    assert result.n_bytes == len(result.svg.encode()) and result.n_paths >= 2
    rendered = render(result.svg, pixels.shape[1], pixels.shape[0])
    assert rendered.shape == pixels.shape and rendered.dtype == np.uint8
    assert score(pixels, DEFAULTS).ssim > 0.95


def test_binary_mode_uses_luminance_not_red():
    pixels = np.full((48, 48, 3), 255, dtype=np.uint8)
    pixels[12:36, 12:36] = (250, 0, 0)  # bright red: red channel > 128 but dark in luminance
    rendered = render(vectorize(pixels, PRESETS["bw"]).svg, 48, 48)
    assert rendered[24, 24].max() < 100
