"""``easel train vectorize``: train the vectorize models (thin wrapper over :func:`train_all`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from build_engines.vectorize.train import train_all
from serve.paths import ICONS_DEV

DEFAULT_DATA = ICONS_DEV / "train"
DEFAULT_OUT = Path(__file__).resolve().parent / "trained"


@click.command("vectorize")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    multiple=True,
    default=[DEFAULT_DATA],
    show_default=True,
    help="Folder of training PNG/JPEG icons.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Where the ONNX models and tier1.json are written.",
)
@click.option("--samples", type=int, default=48, show_default=True, help="Random parameter sets per image.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ppo-steps", type=int, default=100_000, show_default=True)
@click.option("--processes", type=int, default=2, show_default=True, help="Conversion worker processes.")
@click.option("--limit", type=int, default=None, help="Use only the first N images.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the cached conversions table.")
@click.option(
    "--refine-rounds",
    type=int,
    default=2,
    show_default=True,
    help="Rounds of real conversions at the policy's choices, predictor refit and PPO retraining.",
)
@click.option("--quick", is_flag=True, help="A smoke run: 12 images, 8 samples, 2k PPO steps.")
def train_vectorize(
    data: tuple[Path, ...],
    out: Path,
    samples: int,
    seed: int,
    ppo_steps: int,
    processes: int,
    limit: int | None,
    no_cache: bool,
    refine_rounds: int,
    quick: bool,
) -> None:
    """Train the vectorize tiers (table of conversions, predictor, tier 1 map, PPO policy) and export ONNX."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if quick:
        limit, samples, ppo_steps = limit or 12, min(samples, 8), min(ppo_steps, 2048)
    report = train_all(
        list(data),
        out,
        samples_per_image=samples,
        seed=seed,
        ppo_steps=ppo_steps,
        limit=limit,
        processes=processes,
        use_cache=not no_cache,
        epochs=20 if quick else 100,
        verify_images=2 if quick else 16,
        refine_rounds=1 if quick else refine_rounds,
    )
    click.echo(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "images",
                    "rows",
                    "predictor",
                    "tier2_margin",
                    "ppo",
                    "onnx_max_abs_error",
                    "timings",
                )
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    train_vectorize()
