"""Icon styles for vectorize training and evaluation, fetched from package registries and rendered to PNG.

Each :class:`Style` names one package (an Iconify JSON set on npm, or a Debian icon theme) pinned to a version, a
role and how many icons to take. :func:`prepare` fetches the package with its ordinary client (``npm pack``,
``apt-get download``) into the cache, renders the chosen icons at 256 px flattened onto white, and keeps each icon's
source SVG beside its PNG (``name.svg``), so evaluation can compare the served SVG with the original.

Roles keep the sets apart: ``train`` styles are the only ones training reads; ``heldout`` styles are for development
decisions and are never trained on; ``reserved`` styles (Noto Color Emoji, Papirus) are evaluated once, at the end,
and never used to choose anything.
"""

from __future__ import annotations

import enum
import io
import json
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cairosvg
import numpy as np
from PIL import Image

from serve.paths import ICONS_DEV, easel_home

logger = logging.getLogger(__name__)

SIZE = 256


class Role(enum.StrEnum):
    """What a style may be used for."""

    TRAIN = "train"
    HELDOUT = "heldout"
    RESERVED = "reserved"


@dataclass(frozen=True)
class Style:
    """One icon style: where it comes from, what it is for and how many icons to take."""

    name: str
    role: Role
    source: str  # "npm", "deb" or "dev" (the shared icons-dev set)
    package: str = ""
    version: str = ""
    count: int = 120
    member: str = ""  # deb: the folder inside the package whose SVGs are the icons
    description: str = ""


def iconify(name: str, role: Role, version: str, count: int, description: str) -> Style:
    """An Iconify JSON set: npm's ``@iconify-json/<name>`` at ``version``."""
    return Style(name, role, "npm", f"@iconify-json/{name}", version, count, description=description)


STYLES: tuple[Style, ...] = (
    Style("breeze", Role.TRAIN, "dev", count=100, description="Breeze theme (icons-dev/train): flat and line icons"),
    iconify("twemoji", Role.TRAIN, "1.2.5", 40, "Twemoji: flat colour emoji"),
    iconify("openmoji", Role.TRAIN, "1.2.29", 40, "OpenMoji: outlined emoji"),
    iconify("fluent-emoji", Role.TRAIN, "1.2.7", 60, "Fluent Emoji (colour): gradient emoji"),
    iconify("logos", Role.TRAIN, "1.2.19", 40, "SVG Logos: brand logos"),
    iconify("flat-color-icons", Role.TRAIN, "1.2.3", 40, "Flat Color Icons: flat icons"),
    iconify("tabler", Role.TRAIN, "1.2.41", 30, "Tabler: line icons"),
    iconify("fxemoji", Role.HELDOUT, "1.2.2", 80, "Firefox OS emoji: gradient colour emoji"),
    iconify("devicon", Role.HELDOUT, "1.2.68", 80, "Devicon: programming-language and tool logos"),
    iconify("fluent-color", Role.HELDOUT, "1.2.21", 80, "Fluent UI colour icons: gradient UI icons"),
    iconify("noto", Role.RESERVED, "1.2.9", 125, "Noto Color Emoji (reserved: final evaluation only)"),
    Style(
        "papirus",
        Role.RESERVED,
        "deb",
        "papirus-icon-theme",
        "20230104-2",
        count=125,
        member="usr/share/icons/Papirus/64x64/apps",
        description="Papirus app icons (reserved: final evaluation only)",
    ),
)
BY_NAME = {style.name: style for style in STYLES}


def data_root() -> Path:
    """Where prepared styles live: ``$EASEL_HOME/vectorize-styles``."""
    return easel_home() / "vectorize-styles"


def style_dir(style: Style) -> Path:
    """The folder of one prepared style (PNG files, with the source SVG beside each where there is one)."""
    return ICONS_DEV / "train" if style.source == "dev" else data_root() / style.name


def style_images(style: Style) -> list[Path]:
    """The style's images, prepared if missing: ``style.count`` PNG files (spread evenly over the shared set)."""
    files = sorted(str(p) for p in prepare(style).iterdir() if p.suffix == ".png")
    return [Path(p) for p in _spread(files, style.count)]


def styles_with(role: Role) -> list[Style]:
    """The styles of one role, in declaration order."""
    return [style for style in STYLES if style.role is role]


def _npm_icons(style: Style, work: Path) -> dict[str, str]:
    """``name -> svg`` of an Iconify JSON package fetched with ``npm pack``."""
    subprocess.run(
        ["npm", "pack", "--silent", f"{style.package}@{style.version}"], cwd=work, check=True, capture_output=True
    )
    archive = next(work.glob("*.tgz"))
    with tarfile.open(archive) as tar:
        data = json.load(tar.extractfile("package/icons.json"))
    width, height = data.get("width", 16), data.get("height", 16)
    svgs = {}
    for name, icon in data["icons"].items():
        w, h = icon.get("width", width), icon.get("height", height)
        left, top = icon.get("left", 0), icon.get("top", 0)
        svgs[name] = (
            f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {w} {h}" width="{w}" height="{h}">{icon["body"]}</svg>'
        )
    return svgs


def _deb_icons(style: Style, work: Path) -> dict[str, str]:
    """``name -> svg`` of the SVG files (symlinks resolved once each) under ``style.member`` of a Debian package."""
    spec = f"{style.package}={style.version}" if style.version else style.package
    subprocess.run(["apt-get", "download", spec], cwd=work, check=True, capture_output=True)
    deb = next(work.glob("*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
    folder = work / "root" / style.member
    seen, svgs = set(), {}
    for path in sorted(folder.glob("*.svg")):
        target = path.resolve()
        if target.exists() and target not in seen:
            seen.add(target)
            svgs[path.stem] = target.read_text()
    return svgs


def render_svg(svg: str, size: int = SIZE) -> np.ndarray:
    """``svg`` rendered to fit ``size`` x ``size`` (aspect kept, centred), flattened onto white, RGB uint8."""
    svg = svg.replace("currentColor", "#000000")
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size)
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    flat = Image.new("RGBA", image.size, "white")
    flat.alpha_composite(image)
    return np.asarray(flat.convert("RGB"))


def _spread(names: list[str], count: int) -> list[str]:
    """``count`` names spread evenly over the sorted list (deterministic)."""
    names = sorted(names)
    if len(names) <= count:
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def prepare(style: Style, force: bool = False) -> Path:
    """Fetch and render ``style`` into :func:`style_dir` (skipped when already there); returns the folder.

    Icons that fail to render or render blank are skipped, and the next names in the spread take their place.
    """
    out = style_dir(style)
    if style.source == "dev":
        return out
    done = out / "style.json"
    if done.exists() and not force:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("%s: fetching %s %s", style.name, style.package, style.version or "(current)")
        svgs = (_npm_icons if style.source == "npm" else _deb_icons)(style, Path(tmp))
    order = _spread(list(svgs), min(len(svgs), style.count * 2))
    order = order[::2] + order[1::2]  # the evenly spread first choices, then their neighbours as spares
    written = 0
    for name in order:
        if written >= style.count:
            break
        try:
            pixels = render_svg(svgs[name])
        except Exception as error:  # noqa: BLE001 - a broken icon is skipped, the rest still render
            logger.warning("%s: %s does not render (%s)", style.name, name, error)
            continue
        if pixels.min() >= 245:
            continue
        stem = _SAFE.sub("_", f"{style.name}-{name}")
        Image.fromarray(pixels).save(out / f"{stem}.png")
        (out / f"{stem}.svg").write_text(svgs[name])
        written += 1
        if written % 20 == 0:
            logger.info("%s: rendered %d/%d", style.name, written, style.count)
    done.write_text(
        json.dumps({"style": style.name, "package": style.package, "version": style.version, "icons": written})
    )
    logger.info("%s: %d icons in %s", style.name, written, out)
    return out
