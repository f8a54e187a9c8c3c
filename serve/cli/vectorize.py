"""``easel train vectorize`` and ``easel eval vectorize``: thin wrappers over :mod:`.train` and :mod:`.evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from build_engines.vectorize.runtime import TRAINED_DIR
from build_engines.vectorize.styles import BY_NAME, Role, prepare, style_images, styles_with
from serve.cli.options import EXISTING_FOLDER, FOLDER


@click.command("vectorize")
@click.option(
    "--data",
    type=EXISTING_FOLDER,
    multiple=True,
    help="Folders of training PNG/JPEG icons (default: every training style, fetched and rendered when missing).",
)
@click.option(
    "--out",
    type=FOLDER,
    default=TRAINED_DIR,
    show_default=True,
    help="Where the ONNX models and tier1.json are written.",
)
@click.option("--samples", type=int, default=16, show_default=True, help="Random parameter sets per image.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ppo-steps", type=int, default=50_000, show_default=True)
@click.option("--processes", type=int, default=2, show_default=True, help="Conversion worker processes.")
@click.option("--limit", type=int, default=None, help="Use only the first N images of each folder.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the cached conversions tables.")
@click.option(
    "--refine-rounds",
    type=int,
    default=1,
    show_default=True,
    help="Rounds of real conversions at the policy's choices, predictor refit and PPO retraining.",
)
@click.option("--quick", is_flag=True, help="A smoke run: 12 images per folder, 8 samples, 2k PPO steps.")
@click.option(
    "--calibrate-only",
    is_flag=True,
    help="Only re-calibrate the check and tier-2 margins of the models in --out (conversion tables are cached).",
)
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
    calibrate_only: bool,
) -> None:
    """Train the vectorize tiers (conversions, predictor, tier 1 map, PPO policy, check margins) and export ONNX."""
    from build_engines.vectorize.dataset import list_images
    from build_engines.vectorize.train import recalibrate, train_all

    sets = [list_images(folder) for folder in data] or [style_images(style) for style in styles_with(Role.TRAIN)]
    if quick:
        limit, samples, ppo_steps = limit or 12, min(samples, 8), min(ppo_steps, 2048)
    if calibrate_only:
        report = recalibrate([images[:limit] for images in sets], out, samples, seed)
        click.echo(json.dumps({k: report[k] for k in ("tier2_margin", "trust_margins", "calibration_images")}))
        return
    report = train_all(
        sets,
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
    keys = ("images", "rows", "predictor", "tier2_margin", "trust_margins", "ppo", "onnx_max_abs_error", "timings")
    click.echo(json.dumps({k: report[k] for k in keys}, indent=1))


@click.command("vectorize")
@click.argument("folder", required=False, type=EXISTING_FOLDER)
@click.option(
    "--style",
    "style_names",
    multiple=True,
    type=click.Choice(sorted(BY_NAME)),
    help="Evaluate a named style (fetched and rendered when missing) instead of FOLDER; repeatable.",
)
@click.option("--final", is_flag=True, help="Allow the reserved styles (noto, papirus): the final evaluation only.")
@click.option(
    "--out",
    type=FOLDER,
    default=Path("out/eval-vectorize"),
    show_default=True,
    help="Where results.json and quality_vs_size.png are written (one subfolder per style).",
)
@click.option("--size", type=int, default=256, show_default=True, help="Longest side images are resized to.")
@click.option("--random-search", type=int, default=0, show_default=True, help="Sets per image for that oracle.")
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--processes", type=int, default=2, show_default=True, help="Worker processes.")
@click.option(
    "--models", "models_dir", type=FOLDER, default=TRAINED_DIR, show_default=True, help="Trained vectorize models."
)
@click.option("--seed", type=int, default=0, show_default=True)
def eval_vectorize(
    folder: Path | None,
    style_names: tuple[str, ...],
    final: bool,
    out: Path,
    size: int,
    random_search: int,
    limit: int | None,
    processes: int,
    models_dir: Path,
    seed: int,
) -> None:
    """Evaluate defaults, presets, oracles and tiers 1-3/auto on FOLDER's PNG/JPEG files, or on named styles."""
    from build_engines.vectorize.evaluate import evaluate_folder, format_table
    from build_engines.vectorize.plot import plot_quality_vs_size

    styles = [BY_NAME[name] for name in style_names]
    reserved = [s.name for s in styles if s.role is Role.RESERVED]
    if reserved and not final:
        raise click.UsageError(f"{', '.join(reserved)} is reserved for the final evaluation: add --final")
    targets = [(s.name, prepare(s)) for s in styles] + ([(folder.name, folder)] if folder else [])
    if not targets:
        raise click.UsageError("give a FOLDER or --style NAME")
    for name, path in targets:
        result = evaluate_folder(path, size, random_search, limit, processes, models_dir, seed)
        target = out / name if len(targets) > 1 or styles else out
        target.mkdir(parents=True, exist_ok=True)
        (target / "results.json").write_text(json.dumps(result, indent=1))
        plot_quality_vs_size(result["summary"], target / "quality_vs_size.png", f"{name} at {size}px")
        click.echo(f"{name}: {path} ({result['settings']['images']} images, {size}px); vs def = mean SSIM - defaults'")
        click.echo(format_table(result["summary"]))
        click.echo(f"wrote {target / 'results.json'} and {target / 'quality_vs_size.png'}")
