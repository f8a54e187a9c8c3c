"""Changes to the vectorize versions a running stack serves: add, replace (rollback included), remove.

The ``ModelResidency`` (one replica, the stack's one writer of model tables, holding Triton's control key) makes them
through :class:`VectorizeVersionAdmin`, one at a time. A trained folder is checked before anything is installed
(:func:`~serve.vectorize.versions.check_trained_folder`); a version is installed and loaded before the table names it,
so a replace drops nothing in flight, and the version it replaces stays loaded beside it (a request may still name
it with ``model_version``) until it is removed. A removed version takes no new request at once and is unloaded
:data:`DRAIN_S` later, past the longest Triton call a request that resolved it before may still make.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from serve.errors import Conflict, InvalidInput
from serve.triton.control import TritonControl
from serve.vectorize.versions import (
    VectorizeTable,
    check_trained_folder,
    install_version,
    uninstall_version,
    version_specs,
)

logger = logging.getLogger(__name__)

DRAIN_S = 35.0
"""Seconds a removed version stays loaded: a request's ensemble call times out after 30 s."""


class VectorizeVersionAdmin:
    """Installs, loads and serves vectorize versions, and writes the table every Vectorizer replica reads."""

    def __init__(self, table_path: str | None, repository: Path | None, control: TritonControl | None) -> None:
        self.table_path = Path(table_path) if table_path else None
        self.repository = repository
        self.control = control
        self.changing = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def listing(self) -> dict:
        """Every installed version, the current one marked."""
        return {"object": "list", "data": self._table().listing()}

    async def add(self, trained_dir: str) -> dict:
        """Install ``trained_dir`` as a new version beside the current one (requests reach it by ``model_version``)."""
        return await self._install(trained_dir, serve=False)

    async def replace(self, trained_dir: str) -> dict:
        """Install ``trained_dir`` as a new version and make it current (the old one stays loaded until removed)."""
        return await self._install(trained_dir, serve=True)

    async def serve(self, version: int) -> dict:
        """Make an installed version current (a rollback to a version still installed)."""
        async with self.changing:
            table = self._table()
            old = table.serve(version)
            table.write(self.table_path)
        logger.info("vectorize version %d current (was %d)", version, old)
        return self._entry(table, version)

    async def remove(self, version: int) -> dict:
        """Out of service and the repository now (409 for the current one); unloaded once its requests have ended."""
        async with self.changing:
            table = self._table()
            table.remove(version)
            table.write(self.table_path)
        await asyncio.to_thread(uninstall_version, self.repository, version)  # loaded models keep running
        task = asyncio.get_running_loop().create_task(self._unload_later(version))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"object": "vectorize.model", "version": version, "deleted": True}

    async def _install(self, trained_dir: str, serve: bool) -> dict:
        self._require_changeable()
        folder = await asyncio.to_thread(check_trained_folder, trained_dir)  # before anything is installed
        async with self.changing:
            table = self._table()
            version = table.last + 1
            names = await asyncio.to_thread(install_version, self.repository, folder, version)
            await self._load(version, names)
            table.add(folder)
            if serve:
                table.serve(version)
            table.write(self.table_path)
        logger.info("vectorize version %d installed from %s (current: %s)", version, folder, serve)
        return self._entry(table, version)

    async def _load(self, version: int, names: tuple[str, ...]) -> None:
        """Load a version's Triton models in order (the ensemble last); undone and a 400 if Triton refuses one."""
        try:
            for name in names:
                await self.control.load(name)
        except Exception as error:  # noqa: BLE001 - Triton's refusal is the folder's fault: a 400 naming it
            await asyncio.gather(*(self.control.unload(name) for name in names), return_exceptions=True)
            await asyncio.to_thread(uninstall_version, self.repository, version)
            first = (str(error).splitlines() or [type(error).__name__])[0][:300]
            raise InvalidInput(f"trained_dir: Triton could not load it: {first}", "trained_dir") from None

    async def _unload_later(self, version: int) -> None:
        await asyncio.sleep(DRAIN_S)
        names = [spec.name for spec in reversed(version_specs(version))]  # the ensemble first
        for name in names:
            try:
                await self.control.unload(name)
            except RuntimeError as error:
                logger.warning("unloading vectorize version %d: %s", version, error)
        logger.info("vectorize version %d unloaded", version)

    def _table(self) -> VectorizeTable:
        self._require_changeable()
        return VectorizeTable.read(self.table_path)

    def _require_changeable(self) -> None:
        if self.control is None or self.repository is None or self.table_path is None:
            raise Conflict("this stack cannot change its vectorize models while it runs (a cluster's, or untrained)")

    @staticmethod
    def _entry(table: VectorizeTable, version: int) -> dict:
        return {"object": "vectorize.model", **next(e for e in table.listing() if e["version"] == version)}
