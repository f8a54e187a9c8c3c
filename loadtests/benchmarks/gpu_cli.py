"""``easel bench gpu``: its command, importable without the rest of the CLI.

The pack's ``run.sh`` runs it as ``python -m loadtests.benchmarks.gpu_cli`` on a machine that has only what the pack
carries.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.command("gpu")
@click.option(
    "--pack",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Prepare DIR for a GPU machine with no network (the wheels it lacks, Triton, the source, run.sh; at most "
    "60 MiB) instead of running.",
)
@click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"]),
    default="cuda",
    show_default=True,
    help="cpu: a smoke run of the same path in fp32 at 64 px (the numbers mean nothing).",
)
@click.option(
    "--models",
    default="tiny,sd15,sdxl",
    show_default=True,
    help="tiny (the embedded default: its images' PSNR), sd15 (512), sdxl (1024): random weights.",
)
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Timed requests per slot.")
@click.option(
    "--budget-s",
    type=float,
    default=450.0,
    show_default=True,
    help="Rows that would start after this many seconds are listed as skipped.",
)
@click.option(
    "--buckets",
    type=click.IntRange(min=1),
    multiple=True,
    help="A denoiser bucket (rows) the loop model captures instead of the build's; repeat it (e.g. --buckets 1 "
    "--buckets 2 --buckets 4 ... --buckets 24 --buckets 32).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/gpu"), show_default=True)
def gpu(
    pack: Path | None,
    device: str,
    models: str,
    steps: int,
    repeats: int,
    budget_s: float,
    buckets: tuple[int, ...],
    out: Path,
) -> None:
    """Easel served through Triton on a GPU (torch runtime, CUDA graphs, the loop inside Triton) vs diffusers."""
    if pack is not None:
        from loadtests.benchmarks.gpu_pack import make_pack

        size = make_pack(pack)
        click.echo(f"pack in {pack}: {size / 2**20:.1f} MiB; on the GPU machine: sh {pack}/run.sh")
        return
    from loadtests.benchmarks.gpu import MODELS, run_gpu_bench
    from loadtests.benchmarks.gpu_rows import GpuBenchSettings

    names = tuple(name for name in models.split(",") if name)
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: choose from {', '.join(MODELS)}", param_hint="--models")
    how = {"steps": steps, "repeats": repeats, "budget_s": budget_s, "buckets": tuple(sorted(set(buckets)))}
    settings = GpuBenchSettings(names, device, smoke=device == "cpu", **how)
    click.echo(run_gpu_bench(settings, out))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    gpu()
