"""The latent cache's contract, run against SQLite (unit tests) and a real Redis server (integration tests).

A test module imports these and defines a ``store`` fixture: a fresh, empty store of at most :data:`ENTRIES`.
"""

import numpy as np

ENTRIES = 4


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def latents(value: float) -> np.ndarray:
    return np.full((1, 4, 8, 8), value, dtype=np.float32)


def test_the_nearest_entry_of_the_shape_is_found_with_its_similarity(store):
    assert store.nearest("a", unit(1, 0, 0)) is None
    store.put("a", unit(1, 0, 0), latents(1))
    store.put("a", unit(0, 1, 0), latents(2))
    store.put("b", unit(1, 0.1, 0), latents(3))  # nearer, but another shape
    match = store.nearest("a", unit(1, 0.2, 0))
    np.testing.assert_array_equal(match.latents, latents(1))
    assert match.latents.dtype == np.float32 and abs(match.similarity - float(unit(1, 0.2, 0)[0])) < 1e-6
    assert store.nearest("c", unit(1, 0, 0)) is None


def test_the_same_prompt_s_latents_replace_its_earlier_ones(store):
    store.put("a", unit(1, 0), latents(1))
    store.put("a", unit(1, 0), latents(2))
    assert store.count() == 1
    np.testing.assert_array_equal(store.nearest("a", unit(1, 0)).latents, latents(2))


def test_the_least_recently_used_entries_go_beyond_the_bound(store):
    vectors = [unit(1, i, 0) for i in range(ENTRIES)]
    for i, vector in enumerate(vectors):
        store.put("a", vector, latents(i))
    store.nearest("a", vectors[0])  # used: the oldest is now vectors[1]
    store.put("a", unit(0, 0, 1), latents(9))
    assert store.count() == ENTRIES
    assert store.nearest("a", vectors[0]).similarity > 0.999
    assert store.nearest("a", vectors[1]).similarity < 0.999  # dropped: another entry is nearest now


def test_equally_near_entries_resolve_the_same_way_whatever_their_order(store):
    store.put("a", unit(1, 1, 0), latents(1))
    store.put("a", unit(1, -1, 0), latents(2))
    store.put("b", unit(1, -1, 0), latents(2))
    store.put("b", unit(1, 1, 0), latents(1))
    assert store.nearest("a", unit(1, 0, 0)).latents.flat[0] == store.nearest("b", unit(1, 0, 0)).latents.flat[0]
