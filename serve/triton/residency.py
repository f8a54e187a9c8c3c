"""Which served models are loaded in Triton: on demand, the least recently used unloaded for one that does not fit.

A model here is a group of Triton models (one served model's engines) and the bytes of its weights. The weights of
the loaded models share one room (:class:`Residency`'s ``room_bytes``); a model that does not fit is loaded once the
least recently used models with no request in flight, and not pinned, are unloaded. :class:`Residency` decides;
whoever holds Triton's control key carries the loads and unloads out (``serve.models.residency``). The Triton
models that are not loaded are written to a file (:func:`write_parked`) that Triton's supervisor reads: it watches,
and after a restart loads, every model of the stack but those.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


class DoesNotFit(ValueError):
    """Models that cannot be kept as asked: a model's weights and the pinned ones' over the room, an unknown pin."""


@dataclass
class Residency:
    """The loaded models, their requests in flight and last use, within ``room_bytes`` of weights.

    ``room_bytes`` None: room for every model's weights, whatever is added (all stay loaded). A model is any version
    the stack has Triton models for; a retired one (an old version, a removed model) takes no new request and is the
    first to go once its requests have ended.
    """

    weights: dict[str, int]  # bytes of each model's weights
    room_bytes: int | None
    pinned: frozenset[str] = frozenset()
    loaded: dict[str, float] = field(default_factory=dict)  # model -> last use (monotonic seconds)
    in_flight: dict[str, int] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.weights = dict(self.weights)
        unknown = sorted(self.pinned - set(self.weights))
        if unknown:
            raise DoesNotFit(f"--pin {unknown[0]}: not a served model (served: {', '.join(self.weights)})")
        for name in self.weights:
            self.in_flight.setdefault(name, 0)
        pinned = sum(self.weights[name] for name in self.pinned)
        if pinned > self.room:
            raise DoesNotFit(f"the pinned models' weights ({_gib(pinned)}) are more than the room ({_gib(self.room)})")
        for name in self.weights:
            self.check(name)

    @property
    def room(self) -> int:
        """Bytes the loaded models' weights may use together."""
        return self.room_bytes if self.room_bytes is not None else sum(self.weights.values())

    @property
    def used_bytes(self) -> int:
        """The loaded models' weights."""
        return sum(self.weights[name] for name in self.loaded)

    def check(self, model: str) -> None:
        """Raise :class:`DoesNotFit` if ``model``'s weights can never fit beside the pinned models'."""
        size = self.weights[model]
        pinned = sum(self.weights[name] for name in self.pinned if name != model)
        if size + pinned > self.room:
            raise DoesNotFit(
                f"model {model!r}: its weights ({_gib(size)}) and the pinned models' do not fit the room "
                f"({_gib(self.room)})"
            )

    def add(self, model: str, size: int, pinned: bool = False) -> None:
        """A model served from now on (not loaded); :class:`DoesNotFit` (and nothing added) if it can never fit."""
        self.weights[model] = size
        self.in_flight.setdefault(model, 0)
        try:
            self.check(model)
        except DoesNotFit:
            self.forget(model)
            raise
        if pinned:
            self.pinned = self.pinned | {model}

    def retire(self, model: str) -> None:
        """``model`` takes no new request (replaced or removed): it goes once its requests have ended."""
        self.retired.add(model)
        self.pinned = self.pinned - {model}

    def idle_retired(self) -> list[str]:
        """The retired models with no request in flight (to unload and forget)."""
        return [name for name in sorted(self.retired) if self.in_flight.get(name, 0) == 0]

    def forget(self, model: str) -> None:
        """``model`` has no Triton models any more."""
        for table in (self.weights, self.in_flight, self.loaded):
            table.pop(model, None)
        self.retired.discard(model)
        self.pinned = self.pinned - {model}

    def unloads_for(self, model: str) -> list[str] | None:
        """The models to unload (retired ones first, then least recently used) so that ``model`` fits; None if not yet.

        Only models with no request in flight and not pinned may go; [] when it is loaded or fits as it is.
        """
        if model in self.loaded:
            return []
        free = self.room - self.used_bytes
        chosen = []
        for name in sorted(self.loaded, key=lambda name: (name not in self.retired, self.loaded[name])):
            if free >= self.weights[model]:
                break
            if name in self.pinned or self.in_flight[name] > 0:
                continue
            chosen.append(name)
            free += self.weights[name]
        return chosen if free >= self.weights[model] else None

    def fill(self, order: Iterable[str]) -> list[str]:
        """Load (as a start does) the pinned models, then those of ``order`` while they fit; the loaded ones."""
        for name in [*sorted(self.pinned), *order]:
            if self.unloads_for(name) == []:
                self.loaded.setdefault(name, 0.0)
        return list(self.loaded)

    def begin(self, model: str) -> None:
        """A request of ``model`` starts (it is loaded): it is in flight and the most recently used."""
        self.in_flight[model] += 1
        self.loaded[model] = time.monotonic()

    def end(self, model: str) -> None:
        """A request of ``model`` ended."""
        if model in self.in_flight:
            self.in_flight[model] = max(0, self.in_flight[model] - 1)


def write_parked(path: Path, triton_models: Iterable[str], loading: bool = False) -> None:
    """Record the Triton models that are not loaded, and whether a load is under way (replaced whole).

    While one is, Triton may answer its health checks late (loading engines takes its time and CPU): the supervisor
    does not count that against it.
    """
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    aside.write_text(json.dumps({"parked": sorted(triton_models), "loading": loading}))
    aside.replace(path)


def read_parked(path: Path | None) -> tuple[set[str], bool]:
    """The Triton models recorded as not loaded (none when nothing is recorded), and whether a load is under way."""
    try:
        recorded = json.loads(path.read_text()) if path is not None else {}
    except (FileNotFoundError, ValueError):
        recorded = {}
    return set(recorded.get("parked", ())), bool(recorded.get("loading", False))


IN_FLIGHT_FILE = "in-flight.json"
"""Beside the parked file: the requests in flight per version, as the residency counted them last."""


def write_in_flight(path: Path, in_flight: dict[str, int]) -> None:
    """Record the requests in flight per version (replaced whole), so a restarted keeper of the counts resumes them."""
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    aside.write_text(json.dumps({name: count for name, count in in_flight.items() if count > 0}))
    aside.replace(path)


def read_in_flight(path: Path | None) -> dict[str, int]:
    """The requests in flight per version as last recorded (none when nothing is)."""
    try:
        recorded = json.loads(path.read_text()) if path is not None else {}
    except (FileNotFoundError, ValueError):
        recorded = {}
    return {str(name): int(count) for name, count in recorded.items()}


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
