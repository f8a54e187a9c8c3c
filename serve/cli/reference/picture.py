"""docs/architecture.svg: the house's rooms on their floors and the arrows between them, drawn from ARCHITECTURE.md.

The floor table and the mermaid diagram under "## The house" are what ``tests/unit/test_architecture.py`` checks
against the code's imports, so the picture is the tested one: one row per floor (the highest on top), one box per
room, one arrow per import between rooms that the diagram draws (floor 1, which every room may use, has none).
"""

from __future__ import annotations

import re
from html import escape

BOX_W, BOX_H, GAP_X, ROW_H, MARGIN, LABEL_W = 196, 30, 14, 74, 16, 70


def floors(architecture: str) -> dict[int, list[str]]:
    """The floor table under "## The house": floor -> its rooms, as written."""
    house = architecture.split("## The house", 1)[1]
    table = {}
    for floor, rooms in re.findall(r"^\| (\d+) \| (.+) \|$", house, re.MULTILINE):
        table[int(floor)] = re.findall(r"`([^`]+)`", rooms)
    return table


def arrows(architecture: str) -> list[tuple[str, str]]:
    """The mermaid diagram's arrows under "## The house", as (room, room) labels."""
    diagram = architecture.split("## The house", 1)[1].split("```mermaid", 1)[1].split("```", 1)[0]
    labels = dict(re.findall(r'^\s*(\w+)\["([^"]+)"\]', diagram, re.MULTILINE))
    return [(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\w+) --> (\w+)", diagram, re.MULTILINE)]


def architecture_svg(architecture: str) -> str:
    """The picture of ``architecture`` (docs/ARCHITECTURE.md's text) as an SVG document."""
    table = floors(architecture)
    widest = max(len(rooms) for rooms in table.values())
    width = MARGIN * 2 + LABEL_W + widest * (BOX_W + GAP_X)
    height = MARGIN * 2 + len(table) * ROW_H
    where: dict[str, tuple[float, float]] = {}  # room -> its box's top-left corner
    for row, floor in enumerate(sorted(table, reverse=True)):
        rooms = table[floor]
        left = MARGIN + LABEL_W + (widest - len(rooms)) * (BOX_W + GAP_X) / 2
        for column, room in enumerate(rooms):
            where[room] = (left + column * (BOX_W + GAP_X), MARGIN + row * ROW_H)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" font-family="sans-serif" font-size="12">',
        "<title>Easel's rooms on their floors (docs/ARCHITECTURE.md, The house)</title>",
        '<defs><marker id="head" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="#7a869a"/></marker></defs>',
        f'<rect width="{width:.0f}" height="{height}" fill="#ffffff"/>',
    ]
    for row, floor in enumerate(sorted(table, reverse=True)):
        y = MARGIN + row * ROW_H + BOX_H / 2 + 4
        parts.append(f'<text x="{MARGIN}" y="{y:.0f}" fill="#5e6c84">floor {floor}</text>')
    for source, target in arrows(architecture):
        (x1, y1), (x2, y2) = where[source], where[target]
        parts.append(
            f'<line x1="{x1 + BOX_W / 2:.1f}" y1="{y1 + BOX_H:.1f}" x2="{x2 + BOX_W / 2:.1f}" y2="{y2:.1f}" '
            'stroke="#7a869a" stroke-opacity="0.55" marker-end="url(#head)"/>'
        )
    for room, (x, y) in where.items():
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="5" fill="#e9f2ff" stroke="#0c66e4"/>'
        )
        parts.append(
            f'<text x="{x + BOX_W / 2:.1f}" y="{y + BOX_H / 2 + 4:.1f}" text-anchor="middle">{escape(room)}</text>'
        )
    return "\n".join([*parts, "</svg>"]) + "\n"
