"""The compute floor's bookkeeping, with engines replaced by runs of known duration."""

import time

import numpy as np
import pytest

from loadtests.benchmarks.generate import Floor

FEEDS = {"sample": np.zeros((1, 4))}  # one row per run


def _sleeping(durations_ms):
    """A run sleeping ``durations_ms[i]`` in every call of timing ``i``, and the function that moves it to the next."""
    timing = iter(durations_ms)
    state = {"ms": next(timing)}

    def run(feeds):
        time.sleep(state["ms"] / 1000)

    def next_timing():
        state["ms"] = next(timing, state["ms"])

    return run, next_timing


def test_a_timing_counts_the_setting_fastest_before_it_not_the_luckiest_in_it():
    # Gaps wide enough that a loaded machine's late wake-ups (a few ms per sleep) cannot reorder the means.
    steady, steady_next = _sleeping([30, 30, 30])
    lucky, lucky_next = _sleeping([1, 90, 90])  # fastest in the first timing only
    floor = Floor(
        {"unet": [("steady", steady, FEEDS), ("lucky", lucky, FEEDS)]},
        {"unet": {"steady": 30.0, "lucky": 31.0}},
        {"unet": 10},
        engine_s=0.05,
    )
    counted = []
    for _ in range(3):
        timing = floor.time()
        counted.append(timing["counted"]["unet"]["setting"])
        assert timing["ms_per_row"]["unet"].keys() == {"steady", "lucky"}
        steady_next(), lucky_next()
    first = floor.timings[0]
    assert first["ms_per_row"]["unet"]["lucky"] < first["ms_per_row"]["unet"]["steady"]
    # The sweep had steady ahead; after the first timing lucky's mean (31, 1) is ahead; then (31, 1, 90) is not.
    assert counted == ["steady", "lucky", "steady"]
    assert first["seconds_per_image"] == pytest.approx(10 * first["ms_per_row"]["unet"]["steady"] / 1000)
    assert first["images_per_s"] == pytest.approx(1 / first["seconds_per_image"])
    assert floor.mean_images_per_s() == pytest.approx(np.mean([t["images_per_s"] for t in floor.timings]))
