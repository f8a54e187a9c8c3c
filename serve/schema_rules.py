"""Rules across a body's fields, stated in its JSON Schema: a body the schema accepts is never refused for them."""

from __future__ import annotations


def exactly_one(**kinds: str) -> dict:
    """A body gives exactly one of these fields, not null (``name="its JSON type"`` each)."""
    return {"oneOf": [{"required": [name], "properties": {name: {"type": kind}}} for name, kind in kinds.items()]}


def one_or_more(*lists: str) -> dict:
    """A body whose lists ``lists`` hold at least one item between them."""
    return {"anyOf": [{"required": [name], "properties": {name: {"minItems": 1}}} for name in lists]}


def when(field: str, value: str, then: dict, otherwise: dict | None = None) -> dict:
    """A rule on the other fields of a body whose ``field`` is ``value`` (given: a default is never matched)."""
    rule = {"if": {"required": [field], "properties": {field: {"const": value}}}, "then": then}
    return rule | ({"else": otherwise} if otherwise is not None else {})
