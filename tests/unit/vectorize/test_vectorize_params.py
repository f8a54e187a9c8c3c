import numpy as np
import pytest

from serve.vectorize.params import (
    DEFAULTS,
    MODES,
    PRESETS,
    P,
    VtracerParams,
    from_vector,
    sample_vectors,
    scale_to_size,
    to_vector,
)


def test_defaults_pin_path_precision_2():
    assert DEFAULTS.path_precision == 2
    assert DEFAULTS.kwargs()["colormode"] == "color"
    assert PRESETS["bw"].colormode == "binary"
    assert set(PRESETS) == {"poster", "photo", "bw"}


@pytest.mark.parametrize("params", [DEFAULTS, *PRESETS.values()])
def test_named_sets_round_trip(params):
    vector = to_vector(params)
    assert vector.shape == (P,) and vector.dtype == np.float32
    assert np.all((vector >= 0) & (vector <= 1))
    assert from_vector(vector) == params


def test_random_vectors_round_trip_after_decoding():
    rng = np.random.default_rng(0)
    for vector in rng.random((200, P)):
        params = from_vector(vector)
        assert from_vector(to_vector(params)) == params


def test_from_vector_clips_and_covers_modes():
    assert from_vector(np.full(P, 5.0)).filter_speckle == 64
    assert from_vector(np.full(P, -3.0)).color_precision == 1
    assert from_vector(np.full(P, np.nan)) is not None
    modes = {from_vector(v).mode for v in sample_vectors(np.random.default_rng(1), 400)}
    assert modes == set(MODES)
    with pytest.raises(ValueError):
        from_vector(np.zeros(P + 1))


def test_validation_rejects_unknown_strings():
    with pytest.raises(ValueError, match="colormode"):
        VtracerParams(colormode="colour")
    with pytest.raises(ValueError, match="filter_speckle"):
        VtracerParams(filter_speckle=1000)


def test_scale_to_size():
    assert scale_to_size(DEFAULTS, 256) == DEFAULTS
    assert scale_to_size(DEFAULTS, 512).filter_speckle == 8
