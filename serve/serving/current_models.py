"""The models a stack serves now, shared by the serving classes (one table, read again when it changed)."""

from __future__ import annotations

from collections.abc import Mapping

from serve.errors import InvalidInput
from serve.remote.models import RemoteModel
from serve.text_to_image.models import ServedModel, ServedModels


class CurrentModels:
    """The model table as the residency last wrote it, and the remote models the stack started with (``--remote``).

    The table changes as models are added, replaced or removed while the stack runs.
    """

    def __init__(self, models: ServedModels, remotes: Mapping[str, RemoteModel] | None = None) -> None:
        self._models = models
        self.remotes = dict(remotes or {})
        for name in set(self.remotes) & set(models):
            raise InvalidInput(f"remotes: {name!r} names a served model and a remote one", "remotes")

    def now(self) -> ServedModels:
        """The models served now (the table read again when the residency has changed it)."""
        self._models = self._models.refreshed()
        return self._models

    def named(self, name: str | None) -> ServedModel | RemoteModel:
        """The model a request's ``model`` names: a remote one, else :meth:`ServedModels.resolve` (400 if none)."""
        if name in self.remotes:
            return self.remotes[name]
        return self.now().resolve(name, self.remotes)

    def names(self) -> frozenset[str]:
        """The names a request's ``model`` may give (an experiment's variants are among them)."""
        return frozenset(self.now()) | frozenset(self.remotes)
