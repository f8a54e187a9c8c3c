import numpy as np

from serve.vectorize.features import FEATURE_NAMES, F, ImageClass, classify, compute_features, feature_dict
from tests.images import icon_pixels


def test_fixed_length_named_and_deterministic():
    a = compute_features(icon_pixels(256))
    b = compute_features(icon_pixels(256).copy())
    assert a.dtype == np.float32 and a.shape == (F,) and len(FEATURE_NAMES) == F
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))
    assert set(feature_dict(a)) == set(FEATURE_NAMES)


def test_features_respond_to_content():
    blank = feature_dict(compute_features(np.full((128, 128, 3), 255, np.uint8)))
    icon = feature_dict(compute_features(icon_pixels(128)))
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
    assert classify(compute_features(icon_pixels(256))) is ImageClass.SIMPLE


def test_features_barely_depend_on_input_size():
    """Features are computed at most WORK_SIDE px, so the same icon at 256 and 512 px gives nearly the same vector."""
    small, large = compute_features(icon_pixels(256)), compute_features(icon_pixels(512))
    named = dict(zip(FEATURE_NAMES, np.abs(small - large), strict=True))
    named.pop("log_side")  # the one feature that encodes the size
    assert max(named.values()) < 0.02, named
