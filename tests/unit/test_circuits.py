"""Circuit breakers (serve/resilience/circuits.py) on a fake clock: what opens one, what its probe does."""

from __future__ import annotations

import asyncio

import pytest

from serve import metrics
from serve.errors import InvalidInput, NotReady, Overloaded
from serve.resilience.circuits import CircuitOpen, Circuits, CircuitState, model_failed
from serve.resilience.settings import ResilienceSettings
from serve.stack.status import _model_line


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def circuits(**settings) -> tuple[Circuits, Clock]:
    clock = Clock()
    return Circuits(ResilienceSettings(**settings), clock), clock


def call(circuits: Circuits, model: str, error: BaseException | None = None) -> None:
    """One guarded call of ``model`` that raises ``error`` (None: succeeds)."""

    async def run() -> None:
        async with circuits.guarded(model):
            if error is not None:
                raise error

    try:
        asyncio.run(run())
    except Exception as raised:
        assert raised is error


def test_consecutive_failures_open_the_circuit_and_it_refuses_with_a_503_naming_the_model():
    breakers, clock = circuits(circuit_failures=3, circuit_open_s=30)
    for _ in range(2):
        call(breakers, "xl", NotReady("down"))
    assert breakers.state("xl") is CircuitState.CLOSED
    call(breakers, "xl", NotReady("down"))
    assert breakers.state("xl") is CircuitState.OPEN
    with pytest.raises(CircuitOpen) as refused:
        breakers["xl"].admit()
    assert refused.value.status == 503 and refused.value.field == "model" and "xl" in refused.value.message
    assert refused.value.retry_after_s == 30
    clock.now += 20
    with pytest.raises(CircuitOpen) as refused:
        breakers["xl"].admit()
    assert refused.value.retry_after_s == 10
    assert breakers.state("sd15") is CircuitState.CLOSED  # one model's failures leave another's circuit alone


def test_a_success_between_failures_resets_the_count():
    breakers, _ = circuits(circuit_failures=3, circuit_window=100)
    for error in (NotReady("a"), NotReady("b"), None, NotReady("c"), NotReady("d")):
        call(breakers, "xl", error)
    assert breakers.state("xl") is CircuitState.CLOSED


def test_a_failure_rate_over_the_full_window_opens_it():
    breakers, _ = circuits(circuit_failures=0, circuit_window=4, circuit_failure_rate=0.5)
    for error in (NotReady("a"), None, NotReady("b")):
        call(breakers, "xl", error)
    assert breakers.state("xl") is CircuitState.CLOSED  # 3 of 4: the window is not full yet
    call(breakers, "xl", None)
    assert breakers.state("xl") is CircuitState.OPEN  # 2 failed of the last 4


def test_a_client_s_error_and_saturation_say_nothing_of_the_model():
    breakers, _ = circuits(circuit_failures=2)
    for error in (InvalidInput("size: too big", "size"), Overloaded("busy"), InvalidInput("x"), Overloaded("busy")):
        call(breakers, "xl", error)
    assert breakers.state("xl") is CircuitState.CLOSED
    assert model_failed(RuntimeError("replica died")) is True
    assert model_failed(asyncio.CancelledError()) is None


def test_after_the_cooldown_one_probe_goes_and_its_success_closes_the_circuit():
    breakers, clock = circuits(circuit_failures=1, circuit_open_s=10)
    call(breakers, "xl", NotReady("down"))
    clock.now += 10
    assert breakers.state("xl") is CircuitState.HALF_OPEN
    assert breakers["xl"].admit() is True  # the probe
    with pytest.raises(CircuitOpen):
        breakers["xl"].admit()  # only one at a time
    breakers["xl"].record(False, probe=True)
    assert breakers.state("xl") is CircuitState.CLOSED
    assert breakers.states() == {"xl": "closed"}


def test_a_failed_probe_opens_it_again_for_a_whole_cooldown():
    breakers, clock = circuits(circuit_failures=1, circuit_open_s=10)
    call(breakers, "xl", NotReady("down"))
    clock.now += 10
    call(breakers, "xl", NotReady("still down"))
    assert breakers.state("xl") is CircuitState.OPEN
    clock.now += 9
    assert breakers.state("xl") is CircuitState.OPEN
    clock.now += 1
    assert breakers.state("xl") is CircuitState.HALF_OPEN
    call(breakers, "xl", InvalidInput("a client's"))  # a probe that says nothing: the next call probes again
    assert breakers.state("xl") is CircuitState.HALF_OPEN
    call(breakers, "xl", None)
    assert breakers.state("xl") is CircuitState.CLOSED


def test_the_state_is_set_in_the_metric(monkeypatch):
    set_ = []
    monkeypatch.setattr(metrics, "set_gauge", lambda spec, value, **tags: set_.append((spec.name, value, tags)))
    breakers, clock = circuits(circuit_failures=1, circuit_open_s=5)
    call(breakers, "xl", NotReady("down"))
    clock.now += 5
    call(breakers, "xl", None)
    named = [(value, tags["model"]) for name, value, tags in set_ if name == "easel_model_circuit_state"]
    assert named == [(0, "xl"), (2, "xl"), (1, "xl"), (0, "xl")]  # closed from its first call: exported at once


def test_easel_status_names_a_circuit_that_is_not_closed():
    model = {"id": "xl", "version": 1, "family": "sdxl", "native_size": "1024x1024", "loaded": True}
    assert "circuit" not in _model_line(model | {"circuit": "closed"})
    assert _model_line(model | {"circuit": "open"}).endswith("; circuit open")
    assert _model_line(model | {"fallback": ["sd15", "b"]}).endswith("; fallback sd15, b")  # its chain, if any


@pytest.mark.parametrize(
    ("chains", "why"),
    [({"xl": ()}, "at least one"), ({"xl": ("xl",)}, "other models"), ({"xl": ("Bad Name",)}, "cannot name")],
)
def test_a_chain_that_names_no_other_model_is_refused(chains, why):
    with pytest.raises(ValueError, match=why):
        ResilienceSettings(fallbacks=chains)


def test_export_sets_every_served_model_s_state_again_even_one_never_called(monkeypatch):
    set_ = []
    monkeypatch.setattr(metrics, "set_gauge", lambda spec, value, **tags: set_.append((spec.name, value, tags)))
    breakers, _ = circuits(circuit_failures=1, circuit_open_s=5)
    call(breakers, "xl", NotReady("down"))
    set_.clear()
    breakers.export(["sd15", "xl"])  # Ray drops a gauge not set for ~20 s: a health check sets each again
    assert {tags["model"]: value for _, value, tags in set_} == {"sd15": 0, "xl": 2}
    assert breakers.states() == {"sd15": "closed", "xl": "open"}
