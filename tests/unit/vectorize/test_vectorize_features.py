import logging
import time

import numpy as np

from serve.vectorize.features import FEATURE_NAMES, F, ImageClass, classify, compute_features, feature_dict

logger = logging.getLogger(__name__)


def _icon(size: int = 256) -> np.ndarray:
    pixels = np.full((size, size, 3), 255, dtype=np.uint8)
    pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (30, 120, 200)
    pixels[size // 3 : size // 2, size // 3 : 2 * size // 3] = (240, 80, 20)
    return pixels


def test_fixed_length_named_and_deterministic():
    a = compute_features(_icon())
    b = compute_features(_icon().copy())
    assert a.dtype == np.float32 and a.shape == (F,) and len(FEATURE_NAMES) == F
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))
    assert set(feature_dict(a)) == set(FEATURE_NAMES)


def test_features_respond_to_content():
    blank = feature_dict(compute_features(np.full((128, 128, 3), 255, np.uint8)))
    icon = feature_dict(compute_features(_icon(128)))
    rng = np.random.default_rng(0)
    noise = feature_dict(compute_features(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)))
    assert blank["white_fraction"] == 1.0 and blank["edge_density"] == 0.0
    assert icon["edge_density"] > 0 and icon["white_fraction"] < 1.0
    assert noise["unique_colors"] > icon["unique_colors"] > blank["unique_colors"]
    assert noise["entropy"] > icon["entropy"]


def test_gradient_is_classified_as_gradient():
    ramp = np.linspace(0, 255, 256, dtype=np.float32)
    pixels = np.stack([np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256)), np.full((256, 256), 128)], 2)
    assert classify(compute_features(pixels.astype(np.uint8))) is ImageClass.GRADIENT
    assert classify(compute_features(_icon())) is ImageClass.SIMPLE


def test_timing_at_512_is_logged():
    pixels = _icon(512)
    compute_features(pixels)
    start = time.perf_counter()
    for _ in range(20):
        compute_features(pixels)
    logger.info("features at 512x512: %.2f ms", (time.perf_counter() - start) / 20 * 1000)
