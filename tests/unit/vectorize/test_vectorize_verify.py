import numpy as np

from serve.vectorize.features import compute_features
from serve.vectorize.params import PRESETS
from serve.vectorize.runtime import load_tier1
from serve.vectorize.tiers import Choice, sized, tier1, verify_tier2


def _colour_icon() -> np.ndarray:
    pixels = np.full((96, 96, 3), 255, np.uint8)
    pixels[10:60, 10:60] = (30, 120, 220)
    pixels[40:90, 40:90] = (230, 60, 40)
    return pixels


def test_a_worse_tier2_pick_is_replaced_by_tier1s_answer():
    pixels = _colour_icon()
    mapping, _ = load_tier1()
    features = compute_features(pixels)
    bad = Choice(PRESETS["bw"], "tier2")  # binary mode loses the colours
    verified = verify_tier2(pixels, bad, features, mapping)
    expected = sized(tier1(features, mapping), 96).params
    assert verified.choice.params == expected and verified.choice.tier == "tier2:verified->tier1"
    assert 0 < verified.ssim <= 1 and verified.conversion.n_bytes > 0


def test_a_good_tier2_pick_stays_and_other_tiers_are_not_checked():
    pixels = _colour_icon()
    mapping, _ = load_tier1()
    features = compute_features(pixels)
    own = sized(tier1(features, mapping), 96)
    verified = verify_tier2(pixels, Choice(own.params, "auto:tier2"), features, mapping)
    assert verified.choice.tier == "auto:tier2"
    assert verify_tier2(pixels, Choice(own.params, "tier3"), features, mapping) is None
