"""The ``ModelResidency`` deployment: the one keeper of which served models are loaded in Triton.

The Gateway asks it before each generation (:meth:`ModelResidency.begin`) and tells it after (:meth:`end`). A loaded
model's request passes at once; a cold model's waits while the least recently used models with nothing in flight
(and not pinned) are unloaded and its engines loaded (Triton's model control API, explicit mode), then is served.
One replica holds the counts, so every Gateway replica's requests count. It knows Triton's control key from the
environment the stack gave Ray (:data:`~serve.triton.server.CONTROL_KEY_ENV`); without one (a cluster's Tritons)
every model stays loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from ray import serve

from serve import metrics
from serve.errors import NotReady
from serve.text_to_image.models import ServedModels
from serve.triton.residency import Residency, read_parked, write_parked
from serve.triton.server import CONTROL_KEY_ENV, TritonControl

logger = logging.getLogger(__name__)


@serve.deployment(name="ModelResidency", num_replicas=1, max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0.1})
class ModelResidency:
    """Loads models on demand within the room for weights; never unloads a model with a request in flight."""

    def __init__(
        self,
        models: ServedModels,
        room_bytes: int | None = None,
        pinned: tuple[str, ...] = (),
        triton_http_url: str | None = None,
        parked_path: str | None = None,
    ) -> None:
        self.models = models
        weights = {name: model.folder.weights_bytes for name, model in models.items()}
        self.parked_path = Path(parked_path) if parked_path else None
        parked, _ = read_parked(self.parked_path)
        loaded = [name for name, model in models.items() if not parked & set(model.triton_names())]
        self.residency = Residency(weights, room_bytes or sum(weights.values()), frozenset(pinned))
        self.residency.loaded.update(dict.fromkeys(loaded, 0.0))
        key = os.environ.get(CONTROL_KEY_ENV)
        self.control = TritonControl(triton_http_url, key) if triton_http_url and key and self.parked_path else None
        self.loading = asyncio.Lock()  # one load at a time
        self.ended = asyncio.Event()  # a request ended: a model may have become free to unload
        for name in models:
            metrics.set_gauge(metrics.MODEL_LOADED, int(name in loaded), model=name)

    async def begin(self, name: str) -> float:
        """A request of model ``name`` starts: seconds it waited for the model to load (0 when it was loaded)."""
        if name in self.residency.loaded:
            self.residency.begin(name)
            metrics.observe(metrics.MODEL_LOAD_SECONDS, 0.0, model=name)
            return 0.0
        started = time.perf_counter()
        async with self.loading:
            while name not in self.residency.loaded:
                unloads = self.residency.unloads_for(name)
                if unloads is None:  # every model it could replace is busy or pinned: wait for a request to end
                    self.ended.clear()
                    await self.ended.wait()
                    continue
                await self._swap(unloads, name)
            self.residency.begin(name)
        waited = time.perf_counter() - started
        metrics.observe(metrics.MODEL_LOAD_SECONDS, waited, model=name)
        return waited

    def end(self, name: str) -> None:
        """A request of model ``name`` ended."""
        self.residency.end(name)
        self.ended.set()

    def loaded(self) -> list[str]:
        """The models loaded now, in the stack's order."""
        return [name for name in self.models if name in self.residency.loaded]

    async def _swap(self, unloads: list[str], name: str) -> None:
        """Unload ``unloads`` (parked first, so Triton's supervisor stops watching them), then load ``name``."""
        if self.control is None:
            raise NotReady(f"model {name!r} is not loaded and this stack cannot load models", retry_after_s=5)
        for victim in unloads:
            del self.residency.loaded[victim]  # no request starts on it from here on
            self._write_parked()
            logger.info("unloading model %s (least recently used, nothing in flight)", victim)
            await asyncio.gather(*(self.control.unload(t) for t in self.models[victim].triton_names()))
            metrics.set_gauge(metrics.MODEL_LOADED, 0, model=victim)
        logger.info("loading model %s", name)
        started = time.perf_counter()
        self._write_parked(loading=True)
        try:
            await asyncio.gather(*(self.control.load(t) for t in self.models[name].triton_names()))
        except Exception as error:
            self._write_parked()
            logger.error("loading model %s failed: %s", name, error)
            raise NotReady(f"model {name!r} could not be loaded now; retry shortly", retry_after_s=5) from None
        self.residency.loaded[name] = time.monotonic()
        self._write_parked()
        logger.info("model %s loaded in %.2f s", name, time.perf_counter() - started)
        metrics.set_gauge(metrics.MODEL_LOADED, 1, model=name)

    def _write_parked(self, loading: bool = False) -> None:
        cold = [model for name, model in self.models.items() if name not in self.residency.loaded]
        write_parked(self.parked_path, [name for model in cold for name in model.triton_names()], loading)

    async def check_health(self) -> None:
        """Ray Serve's health check: the event loop answers.

        It also sets again which models are loaded: a gauge not set for a while is no longer exported.
        """
        for name in self.models:
            metrics.set_gauge(metrics.MODEL_LOADED, int(name in self.residency.loaded), model=name)
