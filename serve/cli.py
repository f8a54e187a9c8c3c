"""``easel``: build engines, bring the stack up or down, train and evaluate. Parses and wires only."""

from __future__ import annotations

import base64
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import click
import httpx

from build_engines.text_to_image.default_model import MODELS as EMBEDDED_MODELS
from build_engines.text_to_image.published import PUBLISHED
from serve.errors import UnsupportedModel
from serve.paths import ICONS_DEV, MODEL_REPOSITORY, SERVE_CONFIG, easel_home
from serve.triton.spec import Backend

logger = logging.getLogger("easel")

FIRST_REQUEST = {
    "prompt": "a lighthouse on a cliff at dusk, flat vector illustration",
    "size": "256x256",
    "num_inference_steps": 20,
    "seed": 0,
    "scheduler": "ddim",
}


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Easel: text-to-image and vectorize serving on Triton Inference Server and Ray Serve."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


_model_option = click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local diffusers model folder (SD 1.x/2.x or SDXL pipeline). Default: the embedded model.",
)


def _check_model(model_dir: Path | None) -> None:
    """Refuse a folder that is not a supported pipeline with a one-line error, before anything starts."""
    from serve.text_to_image.families import family_of_folder

    if model_dir is not None:
        try:
            family_of_folder(model_dir)
        except UnsupportedModel as error:
            raise click.ClickException(str(error)) from error


def _embedded_option(help_text: str):
    return click.option(
        "--embedded", type=click.Choice(EMBEDDED_MODELS), default=EMBEDDED_MODELS[0], show_default=True, help=help_text
    )


_repository_option = click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=MODEL_REPOSITORY,
    show_default=True,
    help="Triton model repository.",
)


@main.command()
@_model_option
@_repository_option
@_embedded_option("Which embedded model to build when --model is not given.")
@click.option(
    "--backend",
    type=click.Choice([b.value for b in (Backend.PYTHON_ONNX, Backend.ONNXRUNTIME)]),
    default=Backend.PYTHON_ONNX.value,
    show_default=True,
    help="python: ONNX Runtime inside Triton's python backend (bundled CPU Triton); "
    "onnxruntime: native backend configs for the NGC Triton container.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp16: half-precision weights for GPU execution providers (I/O stays fp32; a force_upcast VAE stays fp32). "
    "ONNX Runtime's CPU provider cannot run fp16 engines: their graphs are checked, not their outputs.",
)
@click.option("--force", is_flag=True, help="Rebuild even when cached engines exist.")
def build(model_dir: Path | None, repository: Path, embedded: str, backend: str, precision: str, force: bool) -> None:
    """Export a diffusers model to parity-checked ONNX engines and install them in the model repository."""
    from build_engines.text_to_image.build import build as build_engines
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.vectorize.repository import install_vectorize

    _check_model(model_dir)
    engine_dir = build_engines(
        model_dir or default_model_dir(embedded), repository, force, Backend(backend), precision=precision
    )
    install_vectorize(repository, backend=Backend(backend))
    click.echo(f"engines: {engine_dir}\nrepository: {repository}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the public API.")
@click.option("--port", default=8000, show_default=True, help="Port of the public API.")
@_model_option
@_repository_option
@click.option(
    "--serve-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=SERVE_CONFIG,
    show_default=True,
    help="Ray Serve config YAML.",
)
@click.option("--dashboard-port", default=8265, show_default=True, help="Ray dashboard port.")
@click.option("--prometheus", is_flag=True, help="Also start /usr/bin/prometheus (Debian) scraping Triton and Ray.")
@click.option("--prometheus-port", default=9090, show_default=True, help="Prometheus port on 127.0.0.1.")
@click.option("--detach", is_flag=True, help="Return once the stack is ready; `easel down` stops it.")
@click.option(
    "--first-request/--no-first-request",
    default=True,
    show_default=True,
    help="Send one example generation once ready and show the result.",
)
def up(
    host: str,
    port: int,
    model_dir: Path | None,
    repository: Path,
    serve_config: Path,
    dashboard_port: int,
    prometheus: bool,
    prometheus_port: int,
    detach: bool,
    first_request: bool,
) -> None:
    """Build what is missing, start Triton and Ray Serve, and serve the API until Ctrl-C."""
    from serve.observability.prometheus import PROMETHEUS_BINARY
    from serve.stack import Stack, StackOptions, read_state

    if prometheus and not PROMETHEUS_BINARY.exists():
        click.echo(f"warning: {PROMETHEUS_BINARY} is not installed (apt-get install prometheus); starting without it")
        prometheus = False

    if (state := read_state()) is not None and _alive(state.pid):
        raise click.ClickException(f"Easel is already up (pid {state.pid}, {state.api_url}); run `easel down` first")
    _check_model(model_dir)
    if detach:
        info = _start_detached()
    else:
        stack = Stack(
            StackOptions(
                host=host,
                port=port,
                model_dir=model_dir,
                repository=repository,
                serve_config=serve_config,
                dashboard_port=dashboard_port,
                prometheus=prometheus,
                prometheus_port=prometheus_port,
            )
        )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            info = stack.start()
            stack.write_state()
        except BaseException:
            stack.stop()
            raise
    _print_endpoints(info)
    if first_request:
        _send_first_request(info.api_url)
    if detach:
        return
    click.echo("Serving; press Ctrl-C to stop.")
    try:
        stop.wait()
    finally:
        click.echo("stopping...")
        stack.stop()
        (stack.options.run_dir / "state.json").unlink(missing_ok=True)


@main.command("random-model")
@click.argument("name", type=click.Choice(PUBLISHED))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def random_model(name: str, out_dir: Path) -> None:
    """Create a full-size published architecture (sd15: SD 1.5, sdxl: SDXL base 1.0) with random weights in OUT_DIR.

    Its configs are committed in build_engines/text_to_image/published/; the tokenizers are CLIP's real BPE.
    """
    from build_engines.text_to_image.published import create_random_model

    click.echo(f"created {create_random_model(name, out_dir)}")


@main.command()
def down() -> None:
    """Stop the stack that `easel up` started."""
    from serve.stack import stop_recorded

    click.echo("stopped" if stop_recorded() else "nothing recorded as running")


@main.group()
def train() -> None:
    """Train models (their small outputs are committed)."""


@main.group("eval")
def evaluate() -> None:
    """Evaluate models over a folder of data."""


def _register_vectorize_commands() -> None:
    from build_engines.vectorize.cli import train_vectorize
    from serve.vectorize.cli import eval_vectorize

    train.add_command(train_vectorize)
    evaluate.add_command(eval_vectorize)


_register_vectorize_commands()


@main.group()
def bench() -> None:
    """Benchmarks: print a table and write JSON."""


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _bench_run_dir() -> Path:
    return easel_home() / "run" / "bench"


def _run_against_stack(model_dir: Path | None, bench_fn, whole_info: bool = False):
    """Start a stack on free ports (no dashboard), run ``bench_fn`` on its API URL (or its info), stop it.

    Its model repository is a scratch one, so benchmarking another model leaves the checkout's repository alone.
    """
    from serve.stack import Stack, StackOptions

    run_dir = _bench_run_dir()
    options = StackOptions(
        port=0, dashboard=False, model_dir=model_dir, repository=run_dir / "model_repository", run_dir=run_dir
    )
    stack = Stack(options)
    try:
        info = stack.start()
        return bench_fn(info if whole_info else info.api_url)
    finally:
        stack.stop()


@bench.command("generate")
@_embedded_option("Embedded model to benchmark.")
@click.option("--steps", default=20, show_default=True)
@click.option("--size", default=256, show_default=True)
@click.option(
    "--repeats",
    default=4,
    show_default=True,
    type=click.IntRange(min=2),
    help="Timed requests per concurrency slot, after a warm-up; loaded runs take them in chunks of 4.",
)
@click.option("--concurrency", default="1", show_default=True, help="Comma-separated concurrencies for the stack.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/bench_generate.json"), show_default=True
)
def bench_generate(embedded: str, steps: int, size: int, repeats: int, concurrency: str, out: Path) -> None:
    """Same weights, prompts, steps and size: diffusers vs ONNX Runtime in-process vs the served stack over HTTP."""
    from build_engines.text_to_image.build import build as build_engines
    from build_engines.text_to_image.build import default_model_dir
    from serve.benchmarks import generate, loop

    settings = generate.GenerateSettings(steps=steps, size=size, repeats=repeats, concurrency=_int_list(concurrency))
    model_dir = default_model_dir(embedded)
    engine_dir = build_engines(model_dir, _bench_run_dir() / "model_repository")
    rows = [generate.bench_diffusers(model_dir, settings)]

    def against_stack(api_url: str) -> tuple[list, generate.Floor, list[dict]]:
        floor = generate.Floor.sweep(engine_dir, settings, pause=loop.children_paused)
        served, ratios = [], []
        if 1 in settings.concurrency:
            served += generate.bench_single_request(engine_dir, api_url, settings, pause=loop.children_paused)
        for loaded in (c for c in settings.concurrency if c > 1):
            row, ratio = generate.bench_against_floor(api_url, settings, loaded, floor)  # times the floor around chunks
            served.append(row)
            ratios.append(ratio)
        if not floor.timings:
            floor.time()
        return served, floor, ratios

    served, floor, ratios = _run_against_stack(model_dir, against_stack)
    rows += served
    click.echo(loop.format_table(rows, "img"))
    floor_per_s = floor.mean_images_per_s()
    timed = [t["images_per_s"] for t in floor.timings]
    counted = Counter(f"{name} {c['setting']}" for t in floor.timings for name, c in t["counted"].items())
    click.echo(
        f"compute floor: {floor_per_s:.3f} img/s, mean of {len(timed)} timings ({min(timed):.3f}-{max(timed):.3f}); "
        f"setting counted (timings): {', '.join(f'{key} ({count})' for key, count in sorted(counted.items()))}"
    )
    by_key = {(r.method, r.concurrency): r for r in rows}
    if ("onnxruntime", 1) in by_key:
        ratio = by_key["served", 1].p50_ms / by_key["onnxruntime", 1].p50_ms
        click.echo(f"served c=1: p50 {ratio:.2f} x ONNX Runtime in-process (taking turns)")
    for ratio in ratios:
        overall = statistics.mean(ratio["steady_images_per_s"]) / floor_per_s
        chunks = " ".join(f"{r:.2f}" for r in ratio["chunk_ratios"])
        whole = " ".join(f"{r:.2f}" for r in ratio["whole_chunk_ratios"])
        click.echo(
            f"served c={ratio['concurrency']}: {ratio['ratio']:.2f} x the floor's throughput with all "
            f"{ratio['concurrency']} requests in flight (median of chunks, each against the floor timed around it: "
            f"{chunks}); whole chunks, drain included: {ratio['whole_ratio']:.2f} x ({whole}); mean steady rate "
            f"against the mean of all floor timings: {overall:.2f} x"
        )
        by_process = ratio["cpu_s_per_image_by_process"]
        top = ", ".join(f"{label} {cpu_s:.3f}" for label, cpu_s in list(by_process.items())[:8])
        click.echo(f"  CPU-s per image by process: {top}, all {sum(by_process.values()):.3f}")
    context = {
        "settings": settings.__dict__,
        "model": embedded,
        "cpus": os.cpu_count(),
        "floor_sweep_ms_per_row": floor.sweep_ms_per_row,
        "floor_timings": floor.timings,
        "served_to_floor": ratios,
    }
    loop.write_json(out, rows, floor_images_per_s=floor_per_s, **context)
    click.echo(f"written to {out}")


@bench.command("model")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sizes", default="512", show_default=True, help="Comma-separated image sides, run in ascending order.")
@click.option("--steps", default=10, show_default=True)
@click.option("--guidance", default=7.5, show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/bench_model.json"), show_default=True
)
def bench_model(model_dir: Path, sizes: str, steps: int, guidance: float, out: Path) -> None:
    """Serve MODEL and send one request per size until one fails: end to end, per engine, peak memory."""
    from dataclasses import asdict

    from serve.benchmarks import loop
    from serve.benchmarks.model import TreeMemory, format_runs, run_sizes

    _check_model(model_dir)
    with TreeMemory() as memory:
        started = time.perf_counter()

        def measure(info):
            start_s = time.perf_counter() - started
            return start_s, memory.peak_gb, run_sizes(info, list(_int_list(sizes)), steps, guidance, memory, out.parent)

        start_s, start_peak_gb, runs = _run_against_stack(model_dir, measure, whole_info=True)
    click.echo(f"stack start (cache check or build, Triton, Ray): {start_s:.0f} s, peak {start_peak_gb:.2f} GB own")
    click.echo(format_runs(runs))
    loop.write_json(
        out,
        [],
        model=str(model_dir),
        steps=steps,
        guidance=guidance,
        stack_start_s=round(start_s, 1),
        stack_start_peak_own_gb=round(start_peak_gb, 2),
        runs=[asdict(run) for run in runs],
    )
    click.echo(f"written to {out}")


@bench.command("vectorize")
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=ICONS_DEV / "val",
    show_default=True,
)
@click.option("--size", default=512, show_default=True, help="Longest side the icons are resized to.")
@click.option("--tiers", default="1,2,3,auto,default", show_default=True)
@click.option("--concurrency", default="1", show_default=True, help="Comma-separated concurrencies.")
@click.option("--requests", default=40, show_default=True, help="Timed requests per tier and concurrency.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out/bench_vectorize.json"),
    show_default=True,
)
def bench_vectorize(images: Path, size: int, tiers: str, concurrency: str, requests: int, out: Path) -> None:
    """Per tier: latency p50/p95 (client and server side), conversions/s and CPU-seconds per request."""
    from serve.benchmarks import loop, vectorize

    settings = vectorize.VectorizeSettings(
        size=size, tiers=tuple(tiers.split(",")), concurrency=_int_list(concurrency), requests=requests
    )
    uploads = vectorize.load_uploads(images, size)
    rows, server_ms = _run_against_stack(None, lambda url: vectorize.bench_tiers(url, uploads, settings))
    click.echo(loop.format_table(rows, "conv"))
    click.echo(
        "server-side total ms (p50 / p95): "
        + ", ".join(f"tier {key}: {value['p50']:.1f} / {value['p95']:.1f}" for key, value in server_ms.items())
    )
    loop.write_json(out, rows, settings=settings.__dict__, server_ms=server_ms, images=str(images), cpus=os.cpu_count())
    click.echo(f"written to {out}")


@main.command()
@click.argument("scenario")
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=ICONS_DEV / "val",
    show_default=True,
    help="Icons the vectorize users upload.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where locust's CSV/HTML go (default out/loadtest/SCENARIO).",
)
def loadtest(scenario: str, images: Path, out: Path | None) -> None:
    """Run a bounded locust SCENARIO (loadtests/scenarios/*.yaml) against the stack, starting it if it is down."""
    from serve import loadtest as lt
    from serve.stack import read_state

    try:
        spec = lt.Scenario.load(scenario)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    out = out or Path("out") / "loadtest" / Path(scenario).stem

    def run(info) -> int:
        env = {**os.environ, "EASEL_TRITON_GRPC": info.triton_grpc_url, "EASEL_LOADTEST_IMAGES": str(images)}
        return lt.run_locust(spec, info.api_url, out, env)

    state = read_state()
    if state is not None and _alive(state.pid):
        code = run(state)
    else:
        click.echo("no stack is up; starting one for this run")
        code = _run_against_stack(None, run, whole_info=True)
    click.echo(lt.format_summary(lt.summary(out)))
    click.echo(f"locust CSV and HTML in {out} (exit code {code})")
    if code != 0:
        raise SystemExit(code)


@main.group()
def dashboards() -> None:
    """Grafana dashboards (deployments/grafana/*.json): push them, or render their panels from Prometheus."""


@dashboards.command("push")
@click.option("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000.")
@click.option("--token", required=True, envvar="GRAFANA_TOKEN", help="Service-account token (or $GRAFANA_TOKEN).")
@click.option(
    "--prometheus-url",
    default="http://127.0.0.1:9090",
    show_default=True,
    help="Prometheus URL as Grafana's server reaches it (used when the datasource is created).",
)
def dashboards_push(url: str, token: str, prometheus_url: str) -> None:
    """Create the Easel folder and Prometheus datasource if missing, and create or update every dashboard."""
    from serve.observability.grafana import FOLDER_TITLE, GrafanaPushError, push

    try:
        result = push(url, token, prometheus_url)
    except GrafanaPushError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"folder {FOLDER_TITLE}: {'created' if result.folder_created else 'present'}")
    click.echo(f"datasource: {'created' if result.datasource_created else 'present'}")
    click.echo("dashboards saved: " + ", ".join(result.dashboards))


@dashboards.command("render")
@click.option("--prometheus-url", default="http://127.0.0.1:9090", show_default=True, help="Prometheus to query.")
@click.option("--dashboard", "uid", default="easel-text-to-image", show_default=True, help="Dashboard uid.")
@click.option("--panel", "titles", multiple=True, help="Only the panels with these titles (repeatable).")
@click.option("--minutes", default=15.0, show_default=True, help="Time range, ending now.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/dashboard.png"))
def dashboards_render(prometheus_url: str, uid: str, titles: tuple[str, ...], minutes: float, out: Path) -> None:
    """Plot a dashboard's panels to a PNG with their own PromQL against a running Prometheus."""
    from serve.observability.dashboards import load_dashboards
    from serve.observability.prometheus import PrometheusError
    from serve.observability.render import render_dashboard

    found = {d["uid"]: d for d in load_dashboards()}
    if uid not in found:
        raise click.ClickException(f"no dashboard {uid!r}; choose from {', '.join(sorted(found))}")
    try:
        click.echo(f"written to {render_dashboard(found[uid], prometheus_url, out, minutes, titles=titles)}")
    except PrometheusError as error:
        raise click.ClickException(str(error)) from error


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_detached(timeout_s: float = 600.0):
    """Run `easel up` (foreground) in a new session, logging to a file, and wait for its recorded state."""
    from serve.stack import read_state, wait_until_ready

    run_dir = easel_home() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "state.json").unlink(missing_ok=True)
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    argv = [a for a in argv if a not in ("--first-request",)] + ["--no-first-request"]
    log_path = run_dir / "easel-up.log"
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "serve.cli", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    click.echo(f"starting in the background (pid {child.pid}, log {log_path})")
    deadline = time.monotonic() + timeout_s
    while (info := read_state(run_dir)) is None or info.pid != child.pid:
        if child.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise click.ClickException(f"`easel up` exited with {child.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"not ready after {timeout_s:.0f} s; see {log_path}")
        time.sleep(1)
    wait_until_ready(info.api_url, timeout_s=60)
    return info


def _print_endpoints(info) -> None:
    click.echo(f"""
Easel is up.
  API             {info.api_url}   (POST /v1/images/generations, GET /healthz, GET /readyz, docs at /docs)
  Triton HTTP     {info.triton_http_url}   (KServe v2, e.g. GET /v2/models/unet/stats)
  Triton gRPC     {info.triton_grpc_url}
  Triton metrics  {info.triton_metrics_url}""")
    if info.dashboard_url:
        click.echo(
            f"  Ray dashboard   {info.dashboard_url}   (token auth: `ray get-auth-token` prints the token "
            "to paste at its login; API calls send `Authorization: Bearer <token>`)"
        )
    if getattr(info, "prometheus_url", None):
        click.echo(
            f"  Prometheus      {info.prometheus_url}   (scrapes Triton and Ray; Grafana dashboards: "
            f"`easel dashboards push --url GRAFANA --token TOKEN --prometheus-url {info.prometheus_url}`)"
        )
    click.echo(f"""
Example:
  curl -s {info.api_url}/v1/images/generations -H 'Content-Type: application/json' \\
    -d '{{"prompt": "a red fox, flat icon", "size": "256x256", "seed": 7}}' \\
    > fox.json   # data[0].b64_json is the PNG, base64-encoded
""")


def _send_first_request(api_url: str) -> None:
    started = time.perf_counter()
    response = httpx.post(f"{api_url}/v1/images/generations", json=FIRST_REQUEST, timeout=300)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise click.ClickException(f"first request failed: {response.status_code} {response.text[:500]}")
    path = easel_home() / "run" / "first.png"
    path.write_bytes(base64.b64decode(response.json()["data"][0]["b64_json"]))
    click.echo(
        f"First request: POST /v1/images/generations {FIRST_REQUEST}\n"
        f"  -> {response.status_code} in {elapsed:.2f} s, image saved to {path}"
    )


if __name__ == "__main__":
    main()
