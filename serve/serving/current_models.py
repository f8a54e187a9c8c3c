"""The models a stack serves now, shared by the serving classes (one table, read again when it changed)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from serve.remote.models import RemoteModel
from serve.remote.settings import DEFAULT_KEY_ENVS, RemoteBackend
from serve.text_to_image.model_table import ModelTable
from serve.text_to_image.models import ServedModel, ServedModels


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

    @property
    def remotes(self) -> dict[str, RemoteModel]:
        """The remote models the table declares now."""
        return self._remotes_of(self.now())

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
        return self.now().table.fallbacks

    def named(self, name: str | None) -> ServedModel | RemoteModel:
        """The model a request's ``model`` names: a remote one, else :meth:`ServedModels.resolve` (400 if none)."""
        models = self.now()
        remotes = self._remotes_of(models)
        if name in remotes:
            return remotes[name]
        return models.resolve(name, remotes)

    def names(self) -> frozenset[str]:
        """The names a request's ``model`` may give (an experiment's variants are among them)."""
        models = self.now()
        return frozenset(models) | frozenset(self._remotes_of(models))
