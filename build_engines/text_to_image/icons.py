"""The default model's data: coloured icons on white, their captions, and the colour x icon pairings held out.

Icons are Font Awesome Free's solid SVGs (the ``fontawesomefree`` package) plus five basic shapes drawn here, each
filled with one palette colour and rendered with cairosvg onto white at :data:`IMAGE_SIZE`. One colour per icon is
held out of training (:func:`held_out`) so the evaluation asks for pairings the model has never seen.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

IMAGE_SIZE = 64
ICON_BOX = 52  # the icon is fitted into a centred ICON_BOX square (aspect ratio kept)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (247, 127, 0),
    "yellow": (242, 194, 0),
    "green": (42, 157, 58),
    "teal": (0, 160, 160),
    "blue": (31, 95, 214),
    "purple": (123, 44, 191),
    "pink": (240, 98, 168),
    "brown": (127, 79, 36),
    "black": (17, 17, 17),
}

# Caption word -> Font Awesome solid icon file name (without .svg).
FONT_AWESOME: dict[str, str] = {
    name: name
    for name in (
        "house car plane anchor bell bolt cloud moon sun tree leaf fish cat dog key lock umbrella music camera envelope"
        " phone gift flag bug rocket crown bicycle truck ship paw feather fire droplet snowflake gear trophy lightbulb"
        " book scissors hammer wrench shield ghost skull mountain globe"
    ).split()
} | {"apple": "apple-whole", "mug": "mug-hot", "puzzle": "puzzle-piece", "knight": "chess-knight"}


def _star(points: int = 5, outer: float = 250, inner: float = 100) -> str:
    corners = []
    for k in range(2 * points):
        radius = outer if k % 2 == 0 else inner
        angle = math.pi * k / points - math.pi / 2
        corners.append(f"{256 + radius * math.cos(angle):.1f},{262 + radius * math.sin(angle):.1f}")
    return f'<polygon points="{" ".join(corners)}"/>'


# Basic shapes in a 512 x 512 viewBox.
SHAPES: dict[str, str] = {
    "circle": '<circle cx="256" cy="256" r="240"/>',
    "square": '<rect x="40" y="40" width="432" height="432"/>',
    "triangle": '<polygon points="256,30 490,460 22,460"/>',
    "star": _star(),
    "heart": '<path d="M256 470 C40 320 0 220 40 130 C80 40 210 40 256 140 C302 40 432 40 472 130 C512 220 472 320 256'
    ' 470 Z"/>',
}

ICONS: tuple[str, ...] = tuple(SHAPES) + tuple(FONT_AWESOME)
TEMPLATES = ("a {colour} {icon} icon", "{colour} {icon} icon", "a {colour} {icon}", "an icon of a {colour} {icon}")


@dataclass(frozen=True)
class Pairing:
    """One colour x icon pairing and its caption."""

    colour: str
    icon: str

    def caption(self, template: str = TEMPLATES[0]) -> str:
        """The caption in ``template`` (default: "a red heart icon")."""
        return template.format(colour=self.colour, icon=self.icon)


def held_out() -> list[Pairing]:
    """One colour per icon, never trained on; each colour is held out for as many icons as the others (+-1)."""
    colours = list(COLOURS)
    return [Pairing(colours[(3 * index + 1) % len(colours)], icon) for index, icon in enumerate(ICONS)]


def training_pairings() -> list[Pairing]:
    """Every colour x icon pairing except the held-out ones."""
    excluded = set(held_out())
    return [Pairing(c, i) for i in ICONS for c in COLOURS if Pairing(c, i) not in excluded]


def caption_words() -> list[str]:
    """Every word the captions use (the tokenizer gives each one token)."""
    words = {w for template in TEMPLATES for w in template.replace("{colour}", "").replace("{icon}", "").split()}
    return sorted(words | set(COLOURS) | set(ICONS))


def _font_awesome_dir() -> Path:
    import fontawesomefree

    return Path(fontawesomefree.__file__).parent / "static" / "fontawesomefree" / "svgs" / "solid"


@cache
def icon_svg_body(icon: str) -> tuple[str, str]:
    """``(viewBox, inner SVG markup)`` of ``icon``."""
    if icon in SHAPES:
        return "0 0 512 512", SHAPES[icon]
    text = (_font_awesome_dir() / f"{FONT_AWESOME[icon]}.svg").read_text()
    view_box = re.search(r'viewBox="([^"]+)"', text).group(1)
    inner = re.sub(r"<!--.*?-->", "", text.split(">", 1)[1].rsplit("</svg>", 1)[0], flags=re.S)
    return view_box, inner


def icon_svg(icon: str, rgb: tuple[int, int, int], size: int = IMAGE_SIZE, box: int = ICON_BOX) -> str:
    """A ``size`` x ``size`` SVG: ``icon`` filled with ``rgb``, fitted into a centred ``box`` square, on white."""
    view_box, inner = icon_svg_body(icon)
    offset = (size - box) / 2
    fill = "#{:02x}{:02x}{:02x}".format(*rgb)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">'
        f'<rect width="{size}" height="{size}" fill="#ffffff"/>'
        f'<svg x="{offset}" y="{offset}" width="{box}" height="{box}" viewBox="{view_box}" fill="{fill}">{inner}</svg>'
        "</svg>"
    )


def render(icon: str, rgb: tuple[int, int, int], size: int = IMAGE_SIZE, box: int = ICON_BOX) -> np.ndarray:
    """``icon`` in ``rgb`` on white as a uint8 HWC array (cairosvg)."""
    import cairosvg
    from PIL import Image

    png = cairosvg.svg2png(bytestring=icon_svg(icon, rgb, size, box).encode())
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def render_pairings(pairings: list[Pairing]) -> np.ndarray:
    """The images of ``pairings`` as uint8 NHWC."""
    return np.stack([render(p.icon, COLOURS[p.colour]) for p in pairings])
