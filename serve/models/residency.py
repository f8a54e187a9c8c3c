"""The ``ModelResidency`` deployment: the keeper of which served models are loaded in Triton, and of the model table.

The Gateway asks it before each generation (:meth:`ModelResidency.begin`, by model name: it answers with the version
it counted) and tells it after (:meth:`end`). A loaded model's request passes at once; a cold model's waits while the
least recently used models with nothing in flight (and not pinned) are unloaded and its engines loaded (Triton's
model control API, explicit mode), then is served. One replica holds the counts, so every Gateway replica's requests
count; it records them beside the parked models at every change, and a replica started again (the last one died)
resumes them, so a model with requests in flight is never unloaded under them. It knows Triton's control key from
the environment the stack gave Ray (:data:`~serve.triton.control.CONTROL_KEY_ENV`); without one (a cluster's Tritons)
every model stays loaded.

It is also the one writer of the model table (:class:`~serve.models.served.ModelTable`): :meth:`add`,
:meth:`replace` and :meth:`remove` install an engine folder already built (nothing is built here), load it, and
write the table, which every replica reads again. A replaced or removed version is retired: it takes no new request,
finishes those it has, and is unloaded (and forgotten) once they have ended.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ray import serve

from serve import metrics
from serve.errors import Conflict, InvalidInput, NotReady
from serve.models.served import ServedModel, ServedModels
from serve.models.table import ModelEntry, ModelTable
from serve.triton.control import CONTROL_KEY_ENV, TritonControl
from serve.triton.residency import (
    IN_FLIGHT_FILE,
    DoesNotFit,
    Residency,
    read_in_flight,
    read_parked,
    write_in_flight,
    write_parked,
)
from serve.vectorize.version_admin import VectorizeVersionAdmin
from serve.vectorize.versions import NewVersion, VersionChange

logger = logging.getLogger(__name__)


@serve.deployment(
    name="ModelResidency",
    num_replicas=1,
    max_ongoing_requests=4096,
    ray_actor_options={"num_cpus": 0.1},
    graceful_shutdown_wait_loop_s=0.5,
)
class ModelResidency:
    """Loads models on demand within the room for weights; never unloads a model with a request in flight."""

    def __init__(
        self,
        models: ServedModels,
        pinned: tuple[str, ...] = (),
        triton_http_url: str | None = None,
        parked_path: str | None = None,
        repository: str | None = None,
        vectorize_table_path: str | None = None,
    ) -> None:
        self.models = models.refreshed()  # the table as its file holds it (a replica started again finds it)
        self.parked_path = Path(parked_path) if parked_path else None
        self.repository = Path(repository) if repository else None
        parked, _ = read_parked(self.parked_path)
        versions = self.models.versions()
        weights = {model.version_id: model.folder.weights_bytes for model in versions}
        pins = frozenset(self.models[name].version_id if name in self.models else name for name in pinned)
        self.residency = Residency(weights, models.room, pins)
        loaded = [model.version_id for model in versions if not parked & set(model.triton_names())]
        self.residency.loaded.update(dict.fromkeys(loaded, 0.0))
        for version_id in self.models.table.retired:
            self.residency.retire(version_id)
        self.in_flight_path = self.parked_path.with_name(IN_FLIGHT_FILE) if self.parked_path else None
        for version_id, count in read_in_flight(self.in_flight_path).items():  # a replica started again resumes them
            if version_id in self.residency.in_flight:
                self.residency.in_flight[version_id] = count
        key = os.environ.get(CONTROL_KEY_ENV)
        self.control = TritonControl(triton_http_url, key) if triton_http_url and key and self.parked_path else None
        self.vectorize = VectorizeVersionAdmin(vectorize_table_path, self.repository, self.control)
        self.loading = asyncio.Lock()  # one load at a time
        self.changing = asyncio.Lock()  # one change of the table at a time
        self.ended = asyncio.Event()  # a request ended: a model may have become free to unload
        self._tasks: set[asyncio.Task] = set()
        self._gauges()

    # -- requests -----------------------------------------------------------------------------------------------------

    async def begin(self, version_id: str) -> tuple[str, float]:
        """A request admitted on version ``version_id`` starts: the version counted for it, and seconds it waited.

        The version is the one its model serves now: ``version_id`` itself, or, for a request that raced a replace,
        the new one; a version no longer served, or a removed model, is the 400 :meth:`ServedModels.resolve` gives.
        """
        name = self.models.version(version_id).name
        if version_id in self.residency.retired:  # replaced since it was admitted (or its model removed: a 400)
            version_id = self.models.resolve(name).version_id
        if version_id in self.residency.loaded:
            self._count(self.residency.begin, version_id)
            metrics.observe(metrics.MODEL_LOAD_SECONDS, 0.0, model=name)
            return version_id, 0.0
        started = time.perf_counter()
        async with self.loading:
            while (model := self.models.resolve(name)).version_id not in self.residency.loaded:
                unloads = self.residency.unloads_for(model.version_id)
                if unloads is None:  # every model it could replace is busy or pinned: wait for a request to end
                    self.ended.clear()
                    await self.ended.wait()
                    continue
                await self._swap(unloads, model)
            self._count(self.residency.begin, model.version_id)
        waited = time.perf_counter() - started
        metrics.observe(metrics.MODEL_LOAD_SECONDS, waited, model=name)
        return model.version_id, waited

    async def end(self, version_id: str) -> None:
        """A request of version ``version_id`` ended (a retired version with none left is unloaded).

        A coroutine, as every method here: Ray Serve runs a plain method in a thread, away from the event loop that
        owns the counts (and the unload task it may start).
        """
        self._count(self.residency.end, version_id)
        self.ended.set()
        if version_id in self.residency.retired:
            self._unload_retired_soon()

    def _count(self, change: Callable[[str], None], version_id: str) -> None:
        """Count a request's begin or end, and record the counts: a replica started again resumes them."""
        change(version_id)
        if self.in_flight_path is not None:
            write_in_flight(self.in_flight_path, self.residency.in_flight)

    async def loaded(self) -> list[str]:
        """The versions loaded now (their ids), the current ones in the stack's order first."""
        return [model.version_id for model in self.models.versions() if model.version_id in self.residency.loaded]

    # -- the table ----------------------------------------------------------------------------------------------------

    async def add(self, name: str, engine_dir: str, loras_dir: str | None = None) -> dict:
        """Serve the built engine folder ``engine_dir`` as model ``name`` (installed, loaded if it fits); its entry.

        ``loras_dir``: its LoRA registry folder (:class:`ModelEntry`).
        """
        return await self._switch(lambda table: (table.add(name, engine_dir, loras_dir), None))

    async def replace(self, name: str, engine_dir: str, loras_dir: str | None = None) -> dict:
        """Serve ``engine_dir`` as model ``name``'s next version; the old one finishes its requests, then goes."""
        return await self._switch(lambda table: table.replace(name, engine_dir, loras_dir))

    async def add_remote(self, name: str, declaration: dict) -> None:
        """Serve the remote model ``declaration`` declares as ``name`` (nothing to install or load)."""
        await self._retabled(lambda table: table.add_remote(name, declaration))
        logger.info("model %s added: drawn by %s", name, declaration["url"])

    async def chain(self, name: str, links: tuple[str, ...]) -> None:
        """Make ``links`` model ``name``'s fallback chain (none: it has none)."""
        await self._retabled(lambda table: table.chain(name, links))
        logger.info("model %s: fallback chain %s", name, ", ".join(links) or "(none)")

    async def remove(self, name: str) -> dict:
        """Stop serving model ``name``: new requests for it are 400s; those in flight finish, then it is unloaded."""
        if name in self.models.table.remotes:  # a remote model: nothing loaded
            await self._retabled(lambda table: table.remove(name))
            logger.info("model %s removed (a remote model)", name)
            return {"object": "model", "id": name, "deleted": True, "version": 1}
        self._require_changeable()
        async with self.changing:
            table = self.models.table.copy()
            old = table.remove(name)
            self.models = self.models.with_table(table)
            self.residency.retire(old.version_id)
            self._publish()
            metrics.set_gauge(metrics.MODEL_LOADED, 0, model=name)
            logger.info("model %s removed (version %d finishes its requests, then is unloaded)", name, old.version)
            return {"object": "model", "id": name, "deleted": True, "version": old.version}

    async def vectorize_versions(self) -> dict:
        """The vectorize versions installed, the current one marked (:mod:`serve.vectorize.version_admin`)."""
        return self.vectorize.listing()

    async def change_vectorize(
        self, method: str, change: NewVersion | VersionChange | None, version: int | None = None
    ) -> dict:
        """``POST`` (add), ``PUT`` (replace, or serve an installed version) or ``DELETE`` a vectorize version."""
        if method == "DELETE":
            return await self.vectorize.remove(version)
        if method == "POST":
            return await self.vectorize.add(change.trained_dir)
        if change.version is not None:
            return await self.vectorize.serve(change.version)
        return await self.vectorize.replace(change.trained_dir)

    async def _retabled(self, change: Callable[[ModelTable], None]) -> None:
        """Make ``change`` to the table where it loads nothing (a remote model, a chain), and publish it."""
        self._require_changeable()
        async with self.changing:
            table = self.models.table.copy()
            change(table)
            self.models = self.models.with_table(table)
            self._publish()

    async def _switch(self, change: Callable[[ModelTable], tuple[ModelEntry, ModelEntry | None]]) -> dict:
        """Make ``change`` to the table (it gives the new version and the one it retires).

        The new version is installed and loaded (refused, and nothing changed, if Triton cannot), then served.
        """
        self._require_changeable()
        async with self.changing:
            table = self.models.table.copy()
            new, old = change(table)
            models = await asyncio.to_thread(self.models.with_table, table)  # a folder that cannot be read: its 400
            model = models.version(new.version_id)
            loaded = await self._installed_and_loaded(model, old)
            table = self.models.table.copy()  # as it is now: a retired version may have gone meanwhile
            change(table)
            self.models = models.with_table(table)
            if old is not None:
                self.residency.retire(old.version_id)
            self._publish()
        logger.info("model %s version %d served from %s (loaded: %s)", new.name, new.version, new.engine_dir, loaded)
        return model.public(loaded)

    async def _installed_and_loaded(self, model: ServedModel, old: ModelEntry | None) -> bool:
        """``model`` counted, installed and (if room can be made now) loaded; undone if any of it fails."""
        pinned = old is not None and old.version_id in self.residency.pinned
        try:
            self.residency.add(model.version_id, model.folder.weights_bytes, pinned)
        except DoesNotFit as error:
            raise InvalidInput(f"engine_dir: {error}", "engine_dir") from None
        try:
            await asyncio.to_thread(model.install, self.repository)
            return await self._load_now(model)
        except BaseException:
            self.residency.forget(model.version_id)
            await asyncio.to_thread(model.uninstall, self.repository)
            raise

    async def _load_now(self, model: ServedModel) -> bool:
        """Load a new version now if room can be made without waiting (else its first request loads it).

        Triton refusing it is a 400 naming ``engine_dir``: the folder cannot be served.
        """
        async with self.loading:
            unloads = self.residency.unloads_for(model.version_id)
            if unloads is None:
                return False
            try:
                await self._swap(unloads, model)
            except NotReady as error:
                why = f"engine_dir: Triton could not load it: {error.__cause__ or error}"
                raise InvalidInput(why, "engine_dir") from None
            return True

    def _publish(self) -> None:
        """Write what Triton's supervisor and every replica read: the parked models first, then the table."""
        self._write_parked()
        self.models.table.write(self.models.table_path)
        self._gauges()
        self._unload_retired_soon()

    def _require_changeable(self) -> None:
        if self.control is None or self.repository is None or self.models.table_path is None:
            raise Conflict("this stack cannot change its models while it runs (a cluster's, or one without a table)")

    # -- Triton -------------------------------------------------------------------------------------------------------

    async def _swap(self, unloads: list[str], model: ServedModel) -> None:
        """Unload ``unloads`` (parked first, so Triton's supervisor stops watching them), then load ``model``."""
        if self.control is None:
            raise NotReady(f"model {model.name!r} is not loaded and this stack cannot load models", retry_after_s=5)
        for victim in unloads:
            await self._unload(victim)
        logger.info("loading model %s (version %d)", model.name, model.version)
        started = time.perf_counter()
        self._write_parked(loading=True)
        names = model.triton_names()
        loads = await asyncio.gather(*(self.control.load(t) for t in names), return_exceptions=True)
        failed = [outcome for outcome in loads if isinstance(outcome, BaseException)]
        if failed:  # every load has ended: what did load is unloaded again
            await asyncio.gather(*(self.control.unload(t) for t in names), return_exceptions=True)
            self._write_parked()
            logger.error("loading model %s failed: %s", model.name, failed[0])
            why = (str(failed[0]).splitlines() or [type(failed[0]).__name__])[0][:300]
            raise NotReady(f"model {model.name!r} could not be loaded now; retry shortly", retry_after_s=5) from (
                RuntimeError(why)
            )
        self.residency.loaded[model.version_id] = time.monotonic()
        self._write_parked()
        logger.info("model %s loaded in %.2f s", model.name, time.perf_counter() - started)

    async def _unload(self, version_id: str) -> None:
        """Unload a version with nothing in flight (a retired one is forgotten after: the table no longer has it)."""
        model = self.models.version(version_id)
        del self.residency.loaded[version_id]  # no request starts on it from here on
        self._write_parked()
        logger.info("unloading model %s version %d (nothing in flight)", model.name, model.version)
        await asyncio.gather(*(self.control.unload(t) for t in model.triton_names()))
        if version_id in self.residency.retired:
            self._forget(model)
        self._gauges()

    def _forget(self, model: ServedModel) -> None:
        """A retired version unloaded: out of the table, and out of the repository if the running stack put it there."""
        table = self.models.table.copy()
        table.drop(model.version_id)
        self.models = self.models.with_table(table)
        self.residency.forget(model.version_id)
        self._write_parked()
        table.write(self.models.table_path)
        if model.version > 1 and self.repository is not None:  # version 1 is what `easel up` installed
            model.uninstall(self.repository)
        logger.info("model %s version %d unloaded and forgotten", model.name, model.version)

    def _unload_retired_soon(self) -> None:
        """Unload (in a task) the retired versions whose requests have all ended."""
        if self.control is None or not self.residency.idle_retired():
            return
        task = asyncio.get_running_loop().create_task(self._unload_retired())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unload_retired(self) -> None:
        async with self.loading:
            for version_id in self.residency.idle_retired():
                if version_id in self.residency.loaded:
                    await self._unload(version_id)
                else:
                    self._forget(self.models.version(version_id))

    def _write_parked(self, loading: bool = False) -> None:
        cold = [model for model in self.models.versions() if model.version_id not in self.residency.loaded]
        write_parked(self.parked_path, [name for model in cold for name in model.triton_names()], loading)

    def _gauges(self) -> None:
        """Set whether each served model (its current version) is loaded, and the weights loaded against the budget."""
        for name, model in self.models.items():
            metrics.set_gauge(metrics.MODEL_LOADED, int(model.version_id in self.residency.loaded), model=name)
        metrics.set_gauge(metrics.MODEL_MEMORY_BYTES, self.residency.used_bytes, part="loaded")
        metrics.set_gauge(metrics.MODEL_MEMORY_BYTES, self.residency.room_bytes or 0, part="budget")
