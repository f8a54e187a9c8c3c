import numpy as np

from serve.vectorize.convert import render, score, ssim, vectorize
from serve.vectorize.params import DEFAULTS, PRESETS
from tests.images import icon_pixels


def test_ssim_of_image_with_itself_is_one():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert ssim(pixels, pixels) == 1.0
    assert ssim(pixels, 255 - pixels) < 0.5


def test_vectorize_and_render_at_input_size():
    pixels = icon_pixels(64, 96)
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
