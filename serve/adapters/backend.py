"""The python-backend model of a LoRA-ready engine: the ONNX Runtime model plus the adapters it holds.

Each request row names its adapters and weights (the ``adapters`` string input). For each merged batch the model
loads what it does not hold yet from the stack's registry (``<version>/loras``), keeps at most the registry's
``resident`` adapters per instance (least recently used go first), and feeds the graph the batch's banks
(:class:`serve.adapters.lora.LoraBanks`). Loads, evictions, the time to load and what is held are Triton metrics.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from serve import metrics
from serve.adapters.lora import ADAPTERS_INPUT, SCALE_INPUT, parse_row
from serve.adapters.registry import engine_banks
from serve.triton.onnx_backend import OnnxRuntimeModel

logger = logging.getLogger(__name__)


class _Metrics:
    """Triton custom metrics of one model instance (declared in :mod:`serve.metrics`, exported on Triton's port)."""

    def __init__(self, model: str, instance: str) -> None:
        import triton_python_backend_utils as pb_utils

        self._families = []  # Triton needs each family to outlive its metrics: kept as long as this object

        def family(spec):
            kind = pb_utils.MetricFamily.COUNTER if spec.kind == "counter" else pb_utils.MetricFamily.GAUGE
            self._families.append(pb_utils.MetricFamily(spec.series[0], spec.description, kind))
            return self._families[-1]

        self.model, self.loads, self.labels = (
            model,
            family(metrics.ADAPTER_LOADS),
            {"model": model, "instance": instance},
        )
        self._loads: dict[str, object] = {}
        self._seconds = family(metrics.ADAPTER_LOAD_SECONDS).Metric(labels=self.labels)
        self._evicted = family(metrics.ADAPTER_EVICTIONS).Metric(labels={"model": model})
        self._held = family(metrics.ADAPTER_RESIDENT).Metric(labels=self.labels)
        self._held_bytes = family(metrics.ADAPTER_RESIDENT_BYTES).Metric(labels=self.labels)

    def event(self, kind: str, adapter: str, seconds: float) -> None:
        """Count a load (and its time) or an eviction."""
        if kind == "load":
            if adapter not in self._loads:
                self._loads[adapter] = self.loads.Metric(labels={"model": self.model, "adapter": adapter})
            self._loads[adapter].increment(1)
            self._seconds.increment(seconds)
        elif kind == "evict":
            self._evicted.increment(1)

    def held(self, count: int, nbytes: int) -> None:
        """What the instance holds now."""
        self._held.set(count)
        self._held_bytes.set(nbytes)


class LoraOnnxModel(OnnxRuntimeModel):
    """:class:`OnnxRuntimeModel` whose graph also takes each batch's LoRA banks."""

    def initialize(self, args: dict) -> None:
        """Load the session, the slot table and the registry's bound on resident adapters."""
        super().initialize(args)
        config = json.loads(args["model_config"])
        self.model = config["name"]
        try:
            self.metrics: _Metrics | None = _Metrics(self.model, args.get("model_instance_name", self.model))
        except Exception as error:  # noqa: BLE001 - serving goes on without its metrics
            logger.warning("%s: adapter metrics unavailable: %s", self.model, error)
            self.metrics = None
        on_event = self.metrics.event if self.metrics else None
        engine = self.model.rpartition(".")[2]  # the engine a Triton name serves: unet of xl.unet, of xl.v2.unet
        self.banks = engine_banks(self.files.lora_slots, engine, self.files.loras, on_event)
        logger.info(
            "%s: LoRA-ready, %d slots, up to %d adapters held", self.model, len(self.banks.slots), self.banks.resident
        )

    def prepare(self, merged: dict[str, np.ndarray]) -> tuple[dict, dict, dict[int, Exception]]:
        """The batch's rows without their ``adapters`` strings, the banks those strings ask for, the rows refused."""
        texts = merged.pop(ADAPTERS_INPUT)
        rows = [parse_row(t.decode() if isinstance(t, bytes) else str(t)) for t in texts]
        merged[SCALE_INPUT], banks, refused = self.banks.feeds(rows)
        if self.metrics:
            self.metrics.held(len(self.banks.held), self.banks.held_bytes())
        return merged, banks, refused
