"""The models a stack serves now, shared by the serving classes (one table, read again when it changed).

A request is admitted against one read of it (:class:`ModelsNow`): its model resolved once, its fallback chain and
links looked up in the same table, however often they are asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from serve.models.served import ServedModel, ServedModels
from serve.models.table import ModelTable
from serve.remote.models import RemoteModel
from serve.remote.settings import DEFAULT_KEY_ENVS, RemoteBackend


@dataclass(frozen=True)
class ModelsNow:
    """The model table as one read saw it: the models served here, the remote ones, the fallback chains."""

    served: ServedModels
    remotes: Mapping[str, RemoteModel]

    @property
    def chains(self) -> Mapping[str, tuple[str, ...]]:
        """Each model's fallback chain."""
        return self.served.table.fallbacks

    def named(self, name: str | None) -> ServedModel | RemoteModel:
        """The model a request's ``model`` names: a remote one, else :meth:`ServedModels.resolve` (400 if none)."""
        if name in self.remotes:
            return self.remotes[name]
        return self.served.resolve(name, self.remotes)

    def names(self) -> frozenset[str]:
        """The names a request's ``model`` may give (an experiment's variants are among them)."""
        return frozenset(self.served) | frozenset(self.remotes)


class CurrentModels:
    """The model table as the residency last wrote it: the models served here, the remote ones, the fallback chains.

    The table changes as models are added, replaced or removed while the stack runs, and as chains are set.
    ``transport``: how every remote model is called (None: the network; a test's recorded answers otherwise).
    ``key_envs``: the environment variables a remote's key may be read from (``easel up --remote-key-envs``).
    """

    def __init__(
        self,
        models: ServedModels,
        transport: httpx.AsyncBaseTransport | None = None,
        key_envs: tuple[str, ...] = DEFAULT_KEY_ENVS,
    ) -> None:
        self._models = models
        self._transport = transport
        self.key_envs = key_envs
        self._remotes: tuple[ModelTable | None, dict[str, RemoteModel]] = (None, {})  # the table read, its remotes

    def now(self) -> ServedModels:
        """The models served now (the table read again when the residency has changed it)."""
        self._models = self._models.refreshed()
        return self._models

    def snapshot(self) -> ModelsNow:
        """The table now, in one read: what a request is admitted against."""
        models = self.now()
        return ModelsNow(models, self._remotes_of(models))

    @property
    def remotes(self) -> Mapping[str, RemoteModel]:
        """The remote models the table declares now."""
        return self.snapshot().remotes

    def _remotes_of(self, models: ServedModels) -> dict[str, RemoteModel]:
        """The remote models ``models``' table declares (built again only when the table changed)."""
        table, remotes = self._remotes
        if table is not models.table:
            declared = models.table.remotes.items()
            remotes = {name: self.remote(name, declaration) for name, declaration in declared}
            self._remotes = (models.table, remotes)
        return remotes

    def remote(self, name: str, declaration: Mapping) -> RemoteModel:
        """The remote model ``declaration`` (a :class:`RemoteBackend`'s fields) declares, priced as this stack's."""
        backend = RemoteBackend.model_validate(declaration)
        return RemoteModel(name, backend, self._models.max_cost, key_envs=self.key_envs, transport=self._transport)

    def chains(self) -> Mapping[str, tuple[str, ...]]:
        """Each model's fallback chain, as the table holds them now."""
        return self.snapshot().chains

    def named(self, name: str | None) -> ServedModel | RemoteModel:
        """The model a request's ``model`` names now (:meth:`ModelsNow.named`)."""
        return self.snapshot().named(name)

    def names(self) -> frozenset[str]:
        """The names a request's ``model`` may give now (:meth:`ModelsNow.names`)."""
        return self.snapshot().names()
