"""Which models stay loaded: least recently used first, never one with a request in flight, never a pinned one."""

import pytest

from serve.triton.residency import DoesNotFit, Residency, read_parked, write_parked

WEIGHTS = {"a": 200, "b": 200, "c": 300}


def _loaded(*names: str, room: int = 500, pinned=frozenset()) -> Residency:
    residency = Residency(WEIGHTS, room, frozenset(pinned))
    residency.fill(names)
    return residency


def test_a_start_loads_the_pinned_then_the_models_in_order_while_they_fit():
    assert _loaded("a", "b", "c").fill([]) == ["a", "b"]
    assert Residency(WEIGHTS, 500, frozenset({"c"})).fill(["a", "b"]) == ["c", "a"]
    assert Residency(WEIGHTS, 700, frozenset()).fill(WEIGHTS) == ["a", "b", "c"]


def test_the_least_recently_used_model_with_nothing_in_flight_makes_room():
    residency = _loaded("a", "b")
    residency.begin("a")
    residency.end("a")  # a used after b: b is the least recently used
    assert residency.unloads_for("a") == []
    assert residency.unloads_for("c") == ["b"]
    residency.begin("b")  # b busy now: a goes instead, however recent
    assert residency.unloads_for("c") == ["a"]
    residency.begin("a")  # both busy: c waits
    assert residency.unloads_for("c") is None
    residency.end("b")
    assert residency.unloads_for("c") == ["b"]


def test_a_pinned_model_stays_and_what_cannot_fit_beside_it_is_refused_at_once():
    residency = _loaded("a", "b", pinned={"a"})
    assert residency.unloads_for("c") == ["b"]
    residency.begin("b")
    assert residency.unloads_for("c") is None  # a is pinned, b in flight
    with pytest.raises(DoesNotFit, match="'c'"):
        Residency(WEIGHTS, 400, frozenset({"a"}))  # c (300) never fits beside pinned a (200)
    with pytest.raises(DoesNotFit, match="--pin d"):
        Residency(WEIGHTS, 900, frozenset({"d"}))


def test_the_parked_models_are_recorded_whole(tmp_path):
    path = tmp_path / "parked.json"
    assert read_parked(path) == (set(), False) and read_parked(None) == (set(), False)
    write_parked(path, ["b.unet", "b.text_encoder"], loading=True)
    assert read_parked(path) == ({"b.unet", "b.text_encoder"}, True)
    assert [p.name for p in tmp_path.iterdir()] == ["parked.json"]
