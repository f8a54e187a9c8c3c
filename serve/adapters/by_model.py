"""Adapter settings by served model: ``MODEL:NAME`` keys nested per model, the default model's joined.

``easel up``'s ``--loras``, ``--ip-adapter`` and ``--controlnet`` name a served model or none (the default model's);
:class:`serve.settings.StackOptions` nests them by model with these.
"""

from __future__ import annotations

from typing import Any


def joined(flag: str, bare, named):
    """The default model's adapters given both without a model and by its name, or why they cannot be."""
    if named is None:
        return bare
    if not isinstance(bare, dict):
        raise ValueError(f"{flag}: two folders for the default model")
    if twice := sorted(set(bare) & set(named)):
        raise ValueError(f"{flag}: {', '.join(twice)} given twice for the default model")
    return bare | named


def per_model(given: Any, leaf: type | tuple[type, ...]) -> dict[str, Any]:
    """Settings of adapters by served model: ``MODEL:NAME`` keys (:class:`ForModel`) nested as ``{MODEL: {NAME: v}}``.

    A key without ``MODEL:`` goes under ``""``, the default model; a mapping whose values are not ``leaf`` is taken
    as nested already.
    """
    nested: dict[str, Any] = {}
    for key, value in dict(given or {}).items():
        if not isinstance(value, leaf):
            nested.setdefault(key, {}).update(value)
            continue
        model, _, name = key.rpartition(":")
        nested.setdefault(model, {})[name] = value
    return nested
