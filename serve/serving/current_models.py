"""The models a stack serves now, shared by the serving classes (one table, read again when it changed)."""

from __future__ import annotations

from serve.text_to_image.models import ServedModels


class CurrentModels:
    """The model table as the residency last wrote it (models added, replaced or removed while the stack runs)."""

    def __init__(self, models: ServedModels) -> None:
        self._models = models

    def now(self) -> ServedModels:
        """The models served now (the table read again when the residency has changed it)."""
        self._models = self._models.refreshed()
        return self._models

    def names(self) -> frozenset[str]:
        """The names a request's ``model`` may give (an experiment's variants are among them)."""
        return frozenset(self.now())
