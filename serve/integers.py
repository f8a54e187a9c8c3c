"""Integers as JSON Schema reads them: ``2`` and ``2.0`` are both an ``integer``; ``true`` and ``"2"`` are not.

The API's integer fields take what its document says they take (a client, or a plain schemathesis run, may send
``2.0``) and nothing more: pydantic's strict int refuses ``2.0``, its lax int takes ``true`` and ``"2"``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict


def _integral(value: object) -> object:
    """A float without a fraction as the int it is; anything else as it came (refused by the strict int after)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(**bounds: Any) -> Any:
    """An integer field type with ``bounds`` (Field's ``ge``, ``le``, ``multiple_of``) stated in its schema.

    The bounds go inside the type where the field may be None (``json_int(ge=0) | None``): there a Field's own
    bounds would not reach the document.
    """
    return Annotated[int, Strict(), Field(**bounds), BeforeValidator(_integral)]


JsonInt = json_int()
"""An integer as JSON Schema's ``integer`` is one (bounds given by the field's ``Field``)."""
