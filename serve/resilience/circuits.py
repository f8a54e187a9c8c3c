"""Circuit breakers, one per served model: failures open it, a half-open probe closes it again.

A model whose generations keep failing (its Triton gone, a replica crashing) is not called while its circuit is open:
its requests are refused at once (:class:`CircuitOpen`, a 503 naming the model) or sent down its fallback chain,
instead of each waiting on a backend that is down. After ``circuit_open_s`` one request goes through as a probe
(half-open): its success closes the circuit, its failure opens it again. Each Gateway replica keeps its own breakers
(LiteLLM's router keeps its cooldowns per instance the same way); ``easel_model_circuit_state`` shows each one's.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from enum import StrEnum

from serve import metrics
from serve.errors import EaselError, NotReady, Overloaded
from serve.resilience.settings import ResilienceSettings

logger = logging.getLogger(__name__)


class CircuitState(StrEnum):
    """A circuit's state, and its value in ``easel_model_circuit_state``."""

    CLOSED = "closed"  # the model is called
    HALF_OPEN = "half_open"  # one probe is let through
    OPEN = "open"  # the model is not called

    @property
    def gauge(self) -> int:
        """The metric's value: 0 closed, 1 half-open, 2 open."""
        return list(CircuitState).index(self)


class CircuitOpen(NotReady):
    """A model's circuit is open: it is not called until its cooldown ends."""


class Circuit:
    """One model's breaker. ``clock``: seconds, monotonic (a test's fake one)."""

    def __init__(self, model: str, settings: ResilienceSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.settings = settings
        self.clock = clock
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=settings.circuit_window)  # True: a failure
        self._probing = False
        self._set(CircuitState.CLOSED)  # exported from when it is made: a gauge is a series once it is set

    @property
    def state(self) -> CircuitState:
        """The state now: an open circuit whose cooldown ended is half-open."""
        if self._state is CircuitState.OPEN and self.clock() - self._opened_at >= self.settings.circuit_open_s:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    def admit(self) -> bool:
        """Let one call through (True: it is the half-open circuit's probe); :class:`CircuitOpen` if it may not go."""
        state = self.state
        if state is CircuitState.CLOSED:
            return False
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        wait = max(1, round(self._opened_at + self.settings.circuit_open_s - self.clock()))
        raise CircuitOpen(f"model {self.model}: its circuit is {state} after failures; retry shortly", "model", wait)

    def record(self, failed: bool | None, probe: bool = False) -> None:
        """A call's outcome: ``failed`` True or False, None when it says nothing of the model (a client's error)."""
        if probe:
            self._probing = False
            if failed is None:
                return  # the probe said nothing: the next call probes again
            self._close() if not failed else self._open("its half-open probe failed")
            return
        if failed is None or self._state is not CircuitState.CLOSED:
            return  # a call admitted before the circuit opened tells nothing new
        self._outcomes.append(failed)
        self._consecutive = self._consecutive + 1 if failed else 0
        settings = self.settings
        if settings.circuit_failures and self._consecutive >= settings.circuit_failures:
            self._open(f"{self._consecutive} consecutive failures")
        elif len(self._outcomes) == self._outcomes.maxlen:
            rate = sum(self._outcomes) / len(self._outcomes)
            if rate >= settings.circuit_failure_rate:
                self._open(f"{rate:.0%} of its last {len(self._outcomes)} generations failed")

    def _open(self, why: str) -> None:
        logger.warning("model %s: circuit opens for %.0f s: %s", self.model, self.settings.circuit_open_s, why)
        self._opened_at = self.clock()
        self._set(CircuitState.OPEN)

    def _close(self) -> None:
        logger.info("model %s: circuit closes: its probe succeeded", self.model)
        self._consecutive = 0
        self._outcomes.clear()
        self._set(CircuitState.CLOSED)

    def _set(self, state: CircuitState) -> None:
        self._state = state
        metrics.set_gauge(metrics.MODEL_CIRCUIT_STATE, state.gauge, model=self.model)


def model_failed(error: BaseException) -> bool | None:
    """Whether ``error`` counts against the model (True), or says nothing of it (None).

    A 5xx, or an error that is no Easel one, counts; a 4xx (the client's), a 429 (saturation, not failure) and a
    canceled call (the client left) say nothing.
    """
    if not isinstance(error, Exception) or isinstance(error, Overloaded):
        return None
    if isinstance(error, EaselError):
        return True if error.status >= 500 else None
    return True


class Circuits:
    """Every model's breaker (made at its first call), by model name.

    ``failed``: whether an error a call raised counts against its model (:func:`model_failed` of the error a
    deployment raised, where Ray wraps it).
    """

    def __init__(
        self,
        settings: ResilienceSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        failed: Callable[[BaseException], bool | None] = model_failed,
    ) -> None:
        self.settings = settings or ResilienceSettings()
        self.clock = clock
        self.failed = failed
        self._circuits: dict[str, Circuit] = {}

    @asynccontextmanager
    async def guarded(self, model: str) -> AsyncIterator[None]:
        """A call of ``model`` while the block runs: refused if its circuit is open, its outcome recorded."""
        circuit = self[model]
        probe = circuit.admit()
        try:
            yield
        except BaseException as error:
            circuit.record(self.failed(error), probe)
            raise
        circuit.record(False, probe)

    def __getitem__(self, model: str) -> Circuit:
        if model not in self._circuits:
            self._circuits[model] = Circuit(model, self.settings, self.clock)
        return self._circuits[model]

    def state(self, model: str) -> CircuitState:
        """``model``'s circuit state (closed for a model not called yet)."""
        return self[model].state

    def export(self, models: Iterable[str]) -> None:
        """Set each of ``models``' state in ``easel_model_circuit_state`` again (made closed where not called yet).

        Ray exports a gauge for about 20 s after it is set, so a replica sets them on every health check.
        """
        for model in models:
            self[model]._set(self[model].state)

    def states(self) -> dict[str, str]:
        """Each model's circuit state, by name (``/readyz``'s ``circuits``): those called or exported."""
        return {model: str(circuit.state) for model, circuit in sorted(self._circuits.items())}
