"""``easel eval vectorize DIR``: the EVAL.md protocol over a folder (thin wrapper over :mod:`.evaluate`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from serve.vectorize.evaluate import evaluate_folder, format_table
from serve.vectorize.plot import plot_quality_vs_size
from serve.vectorize.runtime import TRAINED_DIR


@click.command("vectorize")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/eval-vectorize"),
    show_default=True,
    help="Where results.json and quality_vs_size.png are written.",
)
@click.option("--size", type=int, default=256, show_default=True, help="Longest side images are resized to.")
@click.option("--random-search", type=int, default=40, show_default=True, help="Sets per image for the oracle.")
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--processes", type=int, default=2, show_default=True, help="Worker processes.")
@click.option(
    "--models",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=TRAINED_DIR,
    show_default=True,
    help="Trained vectorize models.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def eval_vectorize(
    folder: Path,
    out: Path,
    size: int,
    random_search: int,
    limit: int | None,
    processes: int,
    models_dir: Path,
    seed: int,
) -> None:
    """Evaluate defaults, presets, oracles and tiers 1-3/auto on the PNG/JPEG files in FOLDER."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = evaluate_folder(folder, size, random_search, limit, processes, models_dir, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot_quality_vs_size(result["summary"], out / "quality_vs_size.png", f"{folder.name} at {size}px")
    click.echo(
        f"{folder} ({result['settings']['images']} images, {size}px); bytes/def = median of per-image "
        "ratios to the defaults"
    )
    click.echo(format_table(result["summary"]))
    click.echo(f"wrote {out / 'results.json'} and {out / 'quality_vs_size.png'}")


if __name__ == "__main__":
    eval_vectorize()
