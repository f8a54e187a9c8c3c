"""The one factory of the engine runners around a Triton call, from the client up to a job's loop.

A generation's engine call passes, outermost first: its rows cut into calls of at most an engine's rows per call
(:class:`_Chunked`), a per-row text input added where an engine takes it (:class:`_WithRow`: the job's LoRA row),
its Triton priority level (:class:`_AtPriority`), the model's Triton names (:class:`Namespaced`: one stack serves
several models), the calls of one event-loop turn merged (:class:`~serve.triton.coalesce.CoalescingRunner`), the
client. :func:`replica_runner` builds the bottom (once per replica: every model shares it), :func:`model_runner`
a model's layer and :func:`job_runner` a job's; each is an :class:`~serve.triton.spec.EngineRunner`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from serve.priority import Priority
from serve.triton.coalesce import CoalescingRunner
from serve.triton.spec import EngineRunner, ModelSpec


class Namespaced:
    """An :class:`~serve.triton.spec.EngineRunner` that calls each engine's Triton model under ``prefix`` + its name.

    One stack serves several models, each model's engines under names of its own (``sdxl.unet``); the loop above
    knows only the engine names.
    """

    def __init__(self, runner: EngineRunner, prefix: str) -> None:
        self.runner, self.prefix = runner, prefix
        self._renamed: dict[str, ModelSpec] = {}

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        """``spec``'s engine run as the Triton model ``prefix + spec.name``."""
        if not self.prefix:
            return await self.runner.infer(spec, inputs, priority)
        renamed = self._renamed.get(spec.name)
        if renamed is None:  # a model's engine specs are fixed: renamed once
            renamed = self._renamed[spec.name] = replace(spec, name=f"{self.prefix}{spec.name}")
        return await self.runner.infer(renamed, inputs, priority)


class _AtPriority:
    """An :class:`EngineRunner` that sends every call at one Triton priority level."""

    def __init__(self, runner: EngineRunner, priority: Priority) -> None:
        self.runner, self.level = runner, priority.triton_level

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        return await self.runner.infer(spec, inputs, priority or self.level)


class _WithRow:
    """An :class:`EngineRunner` that adds input ``name`` (``text`` on every row) to each call of an engine taking it."""

    def __init__(self, runner: EngineRunner, name: str, text: str) -> None:
        self.runner, self.name, self.text = runner, name, text

    async def infer(self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0) -> dict:
        if any(t.name == self.name for t in spec.inputs) and self.name not in inputs:
            rows = len(next(iter(inputs.values())))
            inputs = {**inputs, self.name: np.full(rows, self.text, dtype=object)}
        return await self.runner.infer(spec, inputs, priority)


class _Chunked:
    """An :class:`EngineRunner` that sends at most ``rows[engine]`` rows per call, the calls one after another."""

    def __init__(self, runner: EngineRunner, rows: Mapping[str, int]) -> None:
        self.runner, self.rows = runner, rows

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        total = len(next(iter(inputs.values())))
        step = self.rows.get(spec.name, total)
        if step >= total:
            return await self.runner.infer(spec, inputs, priority)
        parts = []
        for start in range(0, total, step):
            part = {name: array[start : start + step] for name, array in inputs.items()}
            parts.append(await self.runner.infer(spec, part, priority))
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def replica_runner(client: EngineRunner) -> CoalescingRunner:
    """The bottom of the chain, once per replica: ``client``'s calls of one event-loop turn merged (every model)."""
    return CoalescingRunner(client)


def model_runner(replica: EngineRunner, prefix: str) -> Namespaced:
    """A model's layer: its engines called under its Triton names (``prefix`` + engine)."""
    return Namespaced(replica, prefix)


def job_runner(
    model: EngineRunner,
    priority: Priority,
    rows_per_call: Mapping[str, int] | None = None,
    row: tuple[str, str] | None = None,
) -> EngineRunner:
    """A job's layer over ``model``'s runner: its priority level, its per-row input, its rows per call.

    ``row``: (input, text), a text input every row of the job carries (its LoRAs); ``rows_per_call``: at most that
    many rows per call of an engine.
    """
    runner: EngineRunner = _AtPriority(model, priority)
    if row is not None:
        runner = _WithRow(runner, *row)
    return _Chunked(runner, rows_per_call or {})
