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


def test_a_retired_version_takes_no_pin_goes_first_once_idle_and_is_forgotten():
    residency = _loaded("a", "b", room=500, pinned={"a"})
    residency.add("a2", 200, pinned=True)  # a's next version takes its pin
    residency.retire("a")
    assert residency.pinned == {"a2"} and residency.retired == {"a"}
    residency.begin("b")
    residency.end("b")  # b is the most recently used, a (retired) the least: a goes first anyway
    residency.begin("a")  # ... but not while a request of it is in flight: b, idle, goes instead
    assert residency.idle_retired() == [] and residency.unloads_for("a2") == ["b"]
    residency.end("a")
    assert residency.idle_retired() == ["a"] and residency.unloads_for("a2") == ["a"]
    residency.forget("a")
    assert "a" not in residency.weights and "a" not in residency.loaded and residency.retired == set()


def test_without_a_room_every_version_fits_and_one_that_never_fits_is_not_added():
    residency = Residency({"a": 200}, None)
    residency.fill(["a"])
    residency.add("b", 900)
    assert residency.unloads_for("b") == []  # the room is every model's weights: nothing is unloaded
    bounded = _loaded("a", room=500, pinned={"a"})
    with pytest.raises(DoesNotFit, match="'d'"):
        bounded.add("d", 400)  # beside pinned a (200) it never fits 500
    assert "d" not in bounded.weights and "d" not in bounded.in_flight


def test_a_residency_replica_started_again_resumes_the_requests_in_flight(engine_dir, tmp_path, monkeypatch):
    """Its counts are recorded at every begin and end: the next replica (the last one died) starts from them."""
    import asyncio

    from serve.models.residency import ModelResidency
    from serve.models.served import ServedModels
    from serve.text_to_image.engine_folder import EngineFolder
    from serve.triton.control import CONTROL_KEY_ENV

    monkeypatch.setenv(CONTROL_KEY_ENV, "key")  # as the stack gives Ray: the residency may load and unload
    room = 2 * EngineFolder(engine_dir).weights_bytes  # two of the three fit
    models = ServedModels.open({name: str(engine_dir) for name in "abc"}, max_cost=64, room_bytes=room)
    parked = tmp_path / "parked.json"
    write_parked(parked, models["c"].triton_names())

    def replica() -> ModelResidency:
        return ModelResidency.func_or_class(models, (), "http://127.0.0.1:1", str(parked))

    async def requests() -> None:
        first = replica()
        assert (await first.begin("a.v1"))[0] == "a.v1" and (await first.begin("a.v1"))[0] == "a.v1"
        await first.end("a.v1")
        again = replica()  # the first died with one request of a in flight
        assert again.residency.in_flight == {"a.v1": 1, "b.v1": 0, "c.v1": 0}
        assert again.residency.unloads_for("c.v1") == ["b.v1"]  # never a, whose request is still running
        await again.end("a.v1")
        assert replica().residency.in_flight["a.v1"] == 0

    asyncio.run(requests())
