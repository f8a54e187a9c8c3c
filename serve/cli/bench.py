"""``easel bench *``: the benchmarks, each printing a table and writing JSON; parse and wire only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from loadtests.benchmarks import cpu
from loadtests.benchmarks.gpu_cli import gpu
from serve.cli.fields import model_options
from serve.cli.options import FILE, INT_LIST, MODEL_OPTION, check_model, images_option, names_option, out_option
from serve.cli.text_to_image import embedded_option
from serve.settings import StackOptions


@click.group()
def bench() -> None:
    """Benchmarks: print a table and write JSON."""


@bench.command("generate")
@embedded_option("Embedded model to benchmark.")
@click.option("--steps", default=20, show_default=True)
@click.option("--size", default=256, show_default=True)
@click.option(
    "--repeats",
    default=4,
    show_default=True,
    type=click.IntRange(min=2),
    help="Timed requests per concurrency slot, after a warm-up; loaded runs take them in chunks of 4.",
)
@click.option("--concurrency", type=INT_LIST, default="1", show_default=True, help="Concurrencies for the stack.")
@out_option("out/bench_generate.json")
@click.option(
    "--device",
    default=None,
    help="cuda (or cpu): diffusers vs Easel's loop on PyTorch, steps merged or not, on this device; no Triton.",
)
@click.option(
    "--adapters",
    type=click.IntRange(min=2),
    default=None,
    help="Benchmark LoRA adapters instead: this many random LoRAs (half held per engine instance); a cold adapter's "
    "first request, throughput with one adapter vs mixed adapters, and the engines' cost per row (with --model: the "
    "engines' costs only, in-process).",
)
@MODEL_OPTION
def bench_generate(
    embedded: str,
    steps: int,
    size: int,
    repeats: int,
    concurrency: tuple[int, ...],
    out: Path,
    device: str | None,
    adapters: int | None,
    model_dir: Path | None,
) -> None:
    """Same weights, prompts, steps and size: diffusers vs ONNX Runtime in-process vs the served stack over HTTP."""
    from build_engines.text_to_image.build import default_model_dir
    from loadtests.benchmarks import generate

    settings = generate.GenerateSettings(steps=steps, size=size, repeats=repeats, concurrency=concurrency)
    if adapters is not None:
        from loadtests.benchmarks.adapters import AdapterBenchSettings, run_adapter_benchmark

        concurrent = max(concurrency)
        adapter_settings = AdapterBenchSettings(
            adapters=adapters,
            resident=adapters // 2,
            steps=steps,
            size=size,
            concurrency=concurrent,
            requests=concurrent * repeats,
        )
        if model_dir is not None:  # a local (full-size) model: the engines in-process only, 4 rows at a time
            check_model(model_dir)
            adapter_settings = dataclasses.replace(adapter_settings, batch=4)
            click.echo(run_adapter_benchmark(model_dir, model_dir.name, adapter_settings, out, stack=False))
        else:
            click.echo(run_adapter_benchmark(default_model_dir(embedded), embedded, adapter_settings, out, stack=True))
        return
    if device is None:
        if model_dir is not None:
            raise click.UsageError("--model is for --device runs; the stack comparison uses --embedded")
        click.echo(generate.run_benchmark(embedded, settings, out))
        return
    from loadtests.benchmarks.device import run_device_benchmark

    check_model(model_dir)
    click.echo(run_device_benchmark(model_dir or default_model_dir(embedded), settings, device, out))


@bench.command("controlnet")
@embedded_option("Embedded model to benchmark (two random ControlNets are made for it).")
@click.option("--steps", default=10, show_default=True)
@click.option("--size", default=128, show_default=True)
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Requests per slot.")
@out_option("out/bench_controlnet.json")
def bench_controlnet(embedded: str, steps: int, size: int, concurrency: int, repeats: int, out: Path) -> None:
    """What a ControlNet adds per step (ms, bytes, memory per row); whether plain and controlled requests merge."""
    from build_engines.text_to_image.build import default_model_dir
    from loadtests.benchmarks.controlnets import run_controlnet_benchmark
    from loadtests.benchmarks.loop import ServedComparison

    settings = ServedComparison(steps, size, concurrency, concurrency * repeats)
    click.echo(run_controlnet_benchmark(default_model_dir(embedded), embedded, settings, out))


@bench.command("cpu")
@MODEL_OPTION
@embedded_option("Embedded model to benchmark when --model is not given (the CI smoke).")
@click.option("--size", default=512, show_default=True, type=click.IntRange(min=8), help="Image side.")
@names_option("--columns", cpu.COLUMNS, "Which ways of running it, comma-separated.")
@names_option(
    "--rows",
    cpu.ROWS,
    "unet, vae: one engine call; lcm4, ddim20: whole images end to end; "
    "ddim20-cutoff: ddim20 with guidance cut off at half the steps (Easel's columns only).",
)
@click.option("--concurrency", type=INT_LIST, default="1,4", show_default=True)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Timed calls per cell.")
@click.option(
    "--genai-python",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A Python with openvino-genai and optimum-intel (e.g. VENV/bin/python); without it the genai "
    "columns say they were skipped.",
)
@out_option("out/bench_cpu.json")
def bench_cpu(model_dir, embedded, size, columns, rows, concurrency, repeats, genai_python, out) -> None:
    """One model on this CPU, every way: diffusers, openvino_genai and Easel's runtimes and precisions, side by side.

    p50 seconds, images per second and peak memory per row (one UNet row, one VAE decode, LCM 4 steps and DDIM 20
    steps guided end to end) and concurrency; the machine's load beside each cell.
    """
    from build_engines.text_to_image.build import default_model_dir

    check_model(model_dir)
    settings = cpu.CpuBenchSettings(
        model_dir or default_model_dir(embedded), size, columns, rows, concurrency, repeats, genai_python
    )
    click.echo(cpu.run_cpu_benchmark(settings, out))


@bench.command("speedups")
@click.option("--pairings", default=55, show_default=True, type=click.IntRange(1, 55), help="Held-out pairings.")
@click.option("--skip-share", default=0.25, show_default=True, help="The stack's --approximate-cache.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1))
@out_option("out/bench_speedups.json")
@click.option("--plot", "plot_path", type=FILE, default=Path("out/bench_speedups.png"), show_default=True)
def bench_speedups(pairings: int, skip_share: float, concurrency: int, out: Path, plot_path: Path) -> None:
    """Fewer UNet rows per image: the LCM student, guidance cutoff, step cache, approximate cache, alone and combined.

    UNet rows from Triton's statistics, CPU-seconds, p50 latency and quality (easel eval generate's scores, PSNR and
    SSIM to the 20-step DDIM baseline) on one stream of prompts with repeats and near repeats, on one stack.
    """
    from loadtests.benchmarks.speedups import SpeedupSettings, run_speedups_benchmark

    settings = SpeedupSettings(pairings=pairings, skip_share=skip_share, concurrency=concurrency)
    click.echo(run_speedups_benchmark(settings, out, plot_path))


@bench.command("model")
@MODEL_OPTION
@embedded_option("Embedded model to serve when --model is not given.")
@click.option("--sizes", type=INT_LIST, default="512", show_default=True, help="Image sides, run in ascending order.")
@click.option("--steps", default=10, show_default=True)
@click.option("--guidance", default=7.5, show_default=True)
@click.option("--n", default=1, show_default=True, type=click.IntRange(1, 4), help="Images per request.")
@model_options(StackOptions, "memory_budget_bytes", "runtime", "precision")
@out_option("out/bench_model.json")
def bench_model(
    model_dir: Path | None,
    embedded: str,
    sizes: tuple[int, ...],
    steps: int,
    guidance: float,
    n: int,
    out: Path,
    **how,
) -> None:
    """Serve a model and send one request per size until one fails: end to end, per engine, peak memory.

    ``--runtime`` and ``--precision`` build and serve it as ``easel up`` would with them (default: its defaults).
    """
    from build_engines.text_to_image.build import default_model_dir
    from loadtests.benchmarks.model import run_benchmark

    check_model(model_dir)
    model_dir = model_dir or default_model_dir(embedded)
    click.echo(run_benchmark(model_dir, list(sizes), steps, guidance, out, n=n, **how))


@bench.command("tiles")
@MODEL_OPTION
@embedded_option("Embedded model to use when --model is not given.")
@click.option("--size", default=512, show_default=True, help="Image side.")
@click.option("--steps", default=4, show_default=True)
@click.option("--seed", default=7, show_default=True)
@out_option("out/bench_tiles.json")
def bench_tiles(model_dir: Path | None, embedded: str, size: int, steps: int, seed: int, out: Path) -> None:
    """One image's latents decoded whole and in diffusers' tiles and halves of them: PSNR to the whole, time, memory."""
    from build_engines.text_to_image.build import build, default_model_dir
    from loadtests.benchmarks.tiles import run

    check_model(model_dir)
    folder = build(model_dir or default_model_dir(embedded), repository=out.parent / "repository")
    click.echo(run(folder, size, steps, seed, out))


@bench.command("ip-unet")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("out/bench_ip_unet.json")
def bench_ip_unet(folders: tuple[Path, ...], out: Path) -> None:
    """Built engine folders' UNet calls side by side (with and without IP-Adapters), interleaved in one process."""
    from loadtests.benchmarks.ip_unet import run

    click.echo(run(list(folders), out))


@bench.command("upscale")
@click.option("--sizes", default="512,1024", show_default=True, help="Input sides (squares), upscaled x4.")
@click.option("--whole-up-to", default=512, show_default=True, help="Largest side PyTorch also runs whole.")
@click.option("--served", type=int, default=None, help="Instead: one upscale of this side through a running stack.")
@out_option("out/bench_upscale.json")
def bench_upscale(sizes: str, whole_up_to: int, served: int | None, out: Path) -> None:
    """Real-ESRGAN x4plus (full size, random weights) by tiles at concurrency 1 and 4, beside PyTorch whole.

    With ``--served SIDE``: one SIDE x SIDE x4 upscale through a stack at the default memory budget, the Triton
    process tree's memory sampled during the request.
    """
    from build_engines.finishing.random_weights import FULL_SIZE, random_upscaler, save_upscaler
    from build_engines.finishing.upscalers import export_upscaler
    from loadtests.benchmarks.upscale import run

    module = random_upscaler("RRDBNet", 4, **FULL_SIZE["RRDBNet"])
    if served is not None:
        from loadtests.benchmarks.served_upscale import served_upscale

        weights = save_upscaler(module, out.parent / "RealESRGAN_x4plus.pth")
        click.echo(served_upscale(weights, served, out.parent / "run_served_upscale", out))
        return
    onnx_path = out.parent / "upscaler_bench" / "model.onnx"
    export_upscaler(module, 4, onnx_path)
    click.echo(run(module, onnx_path, [int(side) for side in sizes.split(",")], whole_up_to, out))


@bench.command("face-restorer")
@click.option("--repeats", default=3, show_default=True, help="Timed runs per row (the median is kept).")
@out_option("out/bench_face_restorer.json")
def bench_face_restorer(repeats: int, out: Path) -> None:
    """GFPGAN v1 clean at v1.4's full size (random weights): ms per 512x512 face, engine and PyTorch."""
    from build_engines.finishing.random_weights import drawn_face, random_restorer
    from build_engines.finishing.restorers import export_restorer
    from loadtests.benchmarks.face_restorer import run

    module = random_restorer(style=512, channel_multiplier=2, narrow=1)
    onnx_path = out.parent / "restorer_bench" / "model.onnx"
    export_restorer(module, onnx_path)
    click.echo(run(module, onnx_path, drawn_face(1024), repeats, out))


@bench.command("safety-checker")
@click.option("--batches", default="1,4", show_default=True, help="Images per engine call.")
@click.option("--side", default=512, show_default=True, help="Side of the square RGB images checked.")
@click.option("--repeats", default=3, show_default=True, help="Timed runs per batch size (the median is kept).")
@out_option("out/bench_safety_checker.json")
def bench_safety_checker(batches: str, side: int, repeats: int, out: Path) -> None:
    """The image safety checker at SD 1.5's shape (random weights): ms per image, preprocessing and engine."""
    from build_engines.moderation.safety_checker import (
        SD15_VISION,
        chosen_pictures,
        export_safety_checker,
        load_safety_checker,
        random_safety_checker,
    )
    from loadtests.benchmarks.safety_checker import run

    folder = random_safety_checker(out.parent / "safety_checker_sd15", *chosen_pictures(), **SD15_VISION)
    engine_dir = out.parent / "safety_checker_engine"
    export_safety_checker(load_safety_checker(folder), engine_dir / "model.onnx")
    click.echo(run(engine_dir, [int(b) for b in batches.split(",")], side, repeats, out))


@bench.command("text-moderator")
@click.option("--concurrency", default="1,8", show_default=True, help="Prompts in flight at once.")
@click.option("--prompts", default=64, show_default=True, help="Prompts timed per way and concurrency.")
@out_option("out/bench_text_moderator.json")
def bench_text_moderator(concurrency: str, prompts: int, out: Path) -> None:
    """The text moderator at BERT-base's shape (random weights) through Triton: ms per prompt, on a scratch stack."""
    from build_engines.moderation.text_moderator import BERT_BASE, random_text_moderator
    from loadtests.benchmarks.text_moderator import run

    folder = random_text_moderator(out.parent / "text_moderator_bert_base", **BERT_BASE)
    click.echo(run(folder, [int(n) for n in concurrency.split(",")], prompts, out))


@bench.command("video")
@names_option(
    "--models",
    ("tiny", "sd15", "svd"),
    "Models: tiny (the embedded default), sd15 (SD 1.5, random weights), svd (the tiny Stable Video Diffusion).",
)
@click.option("--frames", default=16, show_default=True, help="Frames of each video.")
@click.option("--steps", default=1, show_default=True, help="Denoising steps of each video.")
@click.option("--repeats", default=2, show_default=True, help="Timed videos per path (the median is kept).")
@click.option("--interpolate", type=click.Choice(["0", "2", "4", "8"]), default="0", help="RIFE rows at this factor.")
@out_option("out/bench_video.json")
def bench_video(models: tuple[str, ...], frames: int, steps: int, repeats: int, interpolate: str, out: Path) -> None:
    """Videos (AnimateDiff, SVD): seconds per frame-step served against diffusers' pipelines, peak memory."""
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.text_to_image.published import create_random_model
    from loadtests.benchmarks.video import run

    folder = out.parent / "video_bench"
    dirs = {"tiny": default_model_dir("tiny"), "svd": default_model_dir("tiny-svd")}
    if "sd15" in models and not (folder / "sd15" / "model_index.json").is_file():
        create_random_model("sd15", folder / "sd15")
    dirs["sd15"] = folder / "sd15"
    click.echo(run({name: dirs[name] for name in models}, folder, frames, steps, repeats, out, int(interpolate)))


@bench.command("jobs")
@click.option("--size", default=64, show_default=True, help="Image side of every job.")
@click.option("--steps", default=20, show_default=True, help="Steps of each high-priority job.")
@click.option("--high-jobs", default=10, show_default=True, help="High-priority jobs timed per condition.")
@click.option("--normal-jobs", default=24, show_default=True, help="Normal-priority jobs that saturate the stack.")
@out_option("out/bench_jobs.json")
def bench_jobs(size: int, steps: int, high_jobs: int, normal_jobs: int, out: Path) -> None:
    """High-priority background jobs: latency on an idle stack and on one saturated by normal-priority jobs."""
    from loadtests.benchmarks.jobs import JobSettings, run_benchmark

    settings = JobSettings(size=size, steps=steps, high_jobs=high_jobs, normal_jobs=normal_jobs)
    click.echo(run_benchmark(settings, out))


@bench.command("idle")
@click.option("--settle", "settle_s", default=20.0, show_default=True, help="Seconds left to settle after ready.")
@click.option("--window", "window_s", default=60.0, show_default=True, help="Seconds measured.")
@out_option("out/bench_idle.json")
def bench_idle(settle_s: float, window_s: float, out: Path) -> None:
    """What an idle stack costs: each process's CPU while nothing is asked."""
    from loadtests.benchmarks.idle import run_benchmark

    click.echo(run_benchmark(settle_s, window_s, out))


@bench.command("start")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Starts and stops timed.")
@out_option("out/bench_start.json")
def bench_start(repeats: int, out: Path) -> None:
    """How long a stack takes to start and stop, step by step (engines already built)."""
    from loadtests.benchmarks.start import run_benchmark

    click.echo(run_benchmark(repeats, out))


@bench.command("models")
@click.option("--size", default=64, show_default=True, help="Image side of every request.")
@click.option("--steps", default=4, show_default=True, help="Steps of every request.")
@click.option("--requests", default=48, show_default=True, help="Requests per spread (1, 2, 3 models).")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--cold-rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Cold loads per model.")
@out_option("out/bench_models.json")
def bench_models(size: int, steps: int, requests: int, concurrency: int, cold_rounds: int, out: Path) -> None:
    """Several models in one stack: cold loads per family, throughput spread over 1-3 models, a replace under load."""
    from loadtests.benchmarks.models import ModelsSettings, run_benchmark

    click.echo(run_benchmark(ModelsSettings(size, steps, requests, concurrency, cold_rounds), out))


@bench.command("vectorize")
@images_option
@click.option("--size", default=512, show_default=True, help="Longest side the icons are resized to.")
@click.option("--tiers", default="1,2,3,auto,default", show_default=True)
@click.option("--concurrency", type=INT_LIST, default="1", show_default=True, help="Concurrencies.")
@click.option("--requests", default=40, show_default=True, help="Timed requests per tier and concurrency.")
@click.option(
    "--behind-heavy", default=0, show_default=True, help="Also time a 64 px icon while N 2048 px noise uploads trace."
)
@out_option("out/bench_vectorize.json")
def bench_vectorize(
    images: Path, size: int, tiers: str, concurrency: tuple[int, ...], requests: int, behind_heavy: int, out: Path
) -> None:
    """Per tier: latency p50/p95 (client and server side), conversions/s and CPU-seconds per request."""
    from loadtests.benchmarks import vectorize

    settings = vectorize.VectorizeSettings(
        size=size, tiers=tuple(tiers.split(",")), concurrency=concurrency, requests=requests, behind_heavy=behind_heavy
    )
    click.echo(vectorize.run_benchmark(images, settings, out))


bench.add_command(gpu)
