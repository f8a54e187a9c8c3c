"""Render SVG icons of an icon theme (e.g. a Debian ``*-icon-theme`` package) to PNG on white, for evaluation.

Example: ``apt-get download elementary-icon-theme && dpkg -x elementary-icon-theme_*.deb theme`` then
``python -m build_engines.vectorize.render_icons theme/usr/share/icons/elementary \
~/.cache/easel/icons-elementary``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cairosvg
import click
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


def find_icons(theme: Path, size_dir: str = "128") -> list[Path]:
    """Non-symbolic SVGs (else PNGs) under ``theme`` in a ``size_dir`` folder, sorted, symlinks de-duplicated."""
    seen, icons = set(), []
    paths = sorted(theme.rglob("*.svg")) or sorted(theme.rglob("*.png"))
    for path in paths:
        parts = path.relative_to(theme).parts
        if size_dir not in parts[:-1] or "symbolic" in str(path):
            continue
        target = path.resolve()
        if target not in seen and target.exists():
            seen.add(target)
            icons.append(path)
    return icons


def render_icons(theme: Path, out_dir: Path, count: int = 48, size: int = 256, size_dir: str = "128") -> list[Path]:
    """Render ``count`` icons spread evenly over the sorted list to ``size`` px PNGs flattened on white."""
    icons = find_icons(theme, size_dir)
    if not icons:
        raise ValueError(f"no {size_dir}px SVG icons under {theme}")
    chosen = [icons[i] for i in np.linspace(0, len(icons) - 1, min(count, len(icons))).round().astype(int)]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chosen:
        if path.suffix == ".svg":
            png = cairosvg.svg2png(url=str(path.resolve()), output_width=size, output_height=size)
            image = Image.open(io.BytesIO(png)).convert("RGBA")
        else:
            image = Image.open(path.resolve()).convert("RGBA").resize((size, size), Image.Resampling.LANCZOS)
        flat = Image.new("RGBA", image.size, "white")
        flat.alpha_composite(image)
        folders = [p for p in path.relative_to(theme).parts[:-1] if p != size_dir]
        target = out_dir / f"{'-'.join([*folders, path.stem])}.png"
        flat.convert("RGB").save(target)
        written.append(target)
    logger.info("rendered %d icons from %s into %s", len(written), theme, out_dir)
    return written


@click.command("render-icons")
@click.argument("theme", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=int, default=48, show_default=True)
@click.option("--size", type=int, default=256, show_default=True)
@click.option("--size-dir", default="128", show_default=True, help="Theme folder name of the source size.")
def main(theme: Path, out_dir: Path, count: int, size: int, size_dir: str) -> None:
    """Render COUNT icons of THEME into OUT_DIR as PNG on white."""
    logging.basicConfig(level=logging.INFO)
    render_icons(theme, out_dir, count, size, size_dir)


if __name__ == "__main__":
    main()
