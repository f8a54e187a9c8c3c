"""Plain-text tables, as the benchmarks, the load tests and the evaluations print them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


def text_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence]) -> str:
    """A plain-text table: ``columns`` are (header, format spec of the column's cells, e.g. ``">10.1f"``).

    Each row has a value per column; a header is aligned and padded as its column's spec says (its width included).
    """
    head = "".join(f"{header:{_header_spec(spec)}}" for header, spec in columns)
    body = ["".join(f"{value:{spec}}" for value, (_, spec) in zip(row, columns, strict=True)) for row in rows]
    return "\n".join([head, *body])


def _header_spec(spec: str) -> str:
    """The alignment and width of a cell's format spec (``">+8.4f"`` -> ``">8"``), for the column's header."""
    match = _ALIGN_WIDTH.match(spec)
    return f"{match['align'] or '<'}{match['width']}"


_ALIGN_WIDTH = re.compile(r"(?P<align>[<>^]?)[+\- ]?#?0?(?P<width>\d*)")
