"""Quality-vs-size scatter plot of evaluation summary rows, drawn with Pillow (no matplotlib dependency)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#000000",
)


def plot_quality_vs_size(rows: list[dict], path: Path, title: str = "") -> Path:
    """Draw mean SSIM (y) against median bytes ratio vs defaults (x, log2), one point per method."""
    width, height, left, right, top, bottom = 900, 600, 80, 200, 50, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    xs = [math.log2(max(r["bytes_ratio"], 1e-3)) for r in rows]
    ys = [r["mean_ssim"] for r in rows]
    x0, x1 = min(xs + [0.0]) - 0.25, max(xs + [0.0]) + 0.25
    # zoom on the region around the defaults; methods far below are pinned to the bottom edge (legend has values)
    reference = next((r["mean_ssim"] for r in rows if r["method"] == "defaults"), min(ys))
    y0, y1 = max(min(ys), reference - 0.03) - 0.005, max(ys) + 0.005

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (width - left - right),
            height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom),
        )

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for k in range(math.ceil(x0), math.floor(x1) + 1):
        px, _ = at(k, y0)
        draw.line([px, top, px, height - bottom], fill="#dddddd")
        draw.text((px - 12, height - bottom + 6), f"{2.0**k:g}x", fill="black")
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        _, py = at(x0, y)
        draw.line([left, py, width - right, py], fill="#eeeeee")
        draw.text((8, py - 6), f"{y:.3f}", fill="black")
    draw.text((left, height - 25), "median SVG bytes / defaults (log scale)", fill="black")
    draw.text((left, 15), title or "mean SSIM vs SVG size", fill="black")
    for i, (row, x, y) in enumerate(zip(rows, xs, ys, strict=True)):
        colour = _COLOURS[i % len(_COLOURS)]
        px, py = at(x, max(y, y0))
        draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
        draw.text((px + 7, py - 7), row["method"], fill=colour)
        draw.text(
            (width - right + 10, top + 16 * i),
            f"{row['method']}: {row['mean_ssim']:.4f}, {row['bytes_ratio']:.2f}x",
            fill=colour,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
