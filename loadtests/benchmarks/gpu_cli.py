"""``easel bench gpu``: its command, importable without the rest of the CLI.

The pack's ``run.sh`` runs it as ``python -m loadtests.benchmarks.gpu_cli`` on a machine that has only what the pack
carries.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)


@click.command("gpu")
@click.option(
    "--pack",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Prepare DIR for a GPU machine with no network (what it lacks, Triton, the source, run.sh; at most 60 MiB) "
    "instead of running.",
)
@click.option(
    "--pack-python",
    default="3.12",
    show_default=True,
    help="With --pack: the Python the pack's wheels and Triton stub are for (the GPU machine's; 3.11 rehearses here).",
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
    default="sd15,sdxl,svd",
    show_default=True,
    help="sd15 (512), sdxl (1024), svd (14 frames at 1024x576): random weights; tiny (the embedded default: its "
    "images' PSNR against diffusers'), tiny-svd (the tiny SVD).",
)
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Timed requests per slot.")
@click.option(
    "--budget-s",
    type=float,
    default=400.0,
    show_default=True,
    help="A hard deadline: each model gets its share of what is left, no request starts past it (a row it cuts is "
    "kept, marked partial), and the run ends by itself writing its files.",
)
@click.option(
    "--buckets",
    type=click.IntRange(min=1),
    multiple=True,
    help="A denoiser bucket (rows) the loop model captures (and the parity checks) instead of the build's; repeat "
    "it (e.g. --buckets 1 --buckets 2 --buckets 4 ... --buckets 24 --buckets 32).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/gpu"),
    show_default=True,
    help="Where gpu.json, gpu.txt and gpu.log go (nothing else).",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the model repository, engines and Triton's logs go [default: $EASEL_HOME/gpu-work].",
)
@click.option(
    "--stub-numpy",
    envvar="EASEL_STUB_NUMPY",
    default="",
    help="A folder holding a NumPy < 2 that Triton's python-backend stubs read tensors with (the pack's).",
)
@click.option("--keep-log", envvar="EASEL_GPU_KEEP_LOG", is_flag=True, hidden=True, help="Append to gpu.log.")
def gpu(
    pack: Path | None,
    pack_python: str,
    device: str,
    models: str,
    steps: int,
    repeats: int,
    budget_s: float,
    buckets: tuple[int, ...],
    out: Path,
    work: Path | None,
    stub_numpy: str,
    keep_log: bool,
) -> None:
    """Easel served through Triton on a GPU (torch runtime, CUDA graphs, the loop inside Triton) vs diffusers."""
    if pack is not None:
        from loadtests.benchmarks.gpu_pack import make_pack

        size = make_pack(pack, pack_python)
        click.echo(f"pack in {pack}: {size / 2**20:.1f} MiB; on the GPU machine: sh {pack}/run.sh")
        return
    from loadtests.benchmarks.gpu import MODELS, run_gpu_bench
    from loadtests.benchmarks.gpu_rows import GpuBenchSettings
    from serve.paths import easel_home

    names = tuple(name for name in models.split(",") if name)
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: choose from {', '.join(MODELS)}", param_hint="--models")
    how = {"steps": steps, "repeats": repeats, "budget_s": budget_s, "buckets": tuple(sorted(set(buckets)))}
    settings = GpuBenchSettings(names, device, smoke=device == "cpu", stub_numpy=stub_numpy, **how)
    click.echo(run_gpu_bench(settings, out, work or easel_home() / "gpu-work", keep_log))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    gpu()
