"""``easel``: build engines, bring the stack up or down, train and evaluate. Parses and wires only."""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import sys
import threading
from pathlib import Path

import click

from build_engines.text_to_image.default_model import MODELS as EMBEDDED_MODELS
from build_engines.text_to_image.published import PUBLISHED
from serve.adapters.registry import DEFAULT_RESIDENT
from serve.errors import UnsupportedModel
from serve.paths import ICONS_DEV, MODEL_REPOSITORY, SERVE_CONFIG
from serve.processes.ports import GRPC_PORT, TRITON_PORTS
from serve.stores import StoreURLError, scheme
from serve.triton.spec import Backend

logger = logging.getLogger("easel")


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


def _check_ip_adapter(folder: Path | None) -> None:
    """Refuse an ``--ip-adapter`` folder without its weights or image encoder with a one-line error."""
    from serve.adapters.ip_adapter import IpAdapterError, IpAdapterFolder

    if folder is not None:
        try:
            IpAdapterFolder.read(folder).state_dict()
        except IpAdapterError as error:
            raise click.ClickException(str(error)) from error


def _embedded_option(help_text: str):
    return click.option(
        "--embedded", type=click.Choice(EMBEDDED_MODELS), default=EMBEDDED_MODELS[0], show_default=True, help=help_text
    )


class _Bytes(click.ParamType):
    """A size in bytes: 8GiB, 512MiB, 2G, 1500000000."""

    name = "size"
    _FORM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?)b?)?\s*$", re.IGNORECASE)

    def convert(self, value, param, ctx) -> int:
        match = self._FORM.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size like 8GiB, 512MiB or 2G", param, ctx)
        number, unit, binary = match.groups()
        power = "kmgt".index(unit.lower()) + 1 if unit else 0
        size = int(float(number) * (1024 if binary else 1000) ** power)
        if size <= 0:
            self.fail(f"{value!r}: the size must be positive", param, ctx)
        return size


_BYTES = _Bytes()

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
    type=click.Choice([b.value for b in Backend]),
    default=Backend.PYTHON_ONNX.value,
    show_default=True,
    help="python: ONNX Runtime inside Triton's python backend (bundled CPU Triton); "
    "onnxruntime: native backend configs for the NGC Triton container; tensorrt: fp16 TensorRT plans for it (needs "
    "the gpu extra and an NVIDIA GPU).",
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
    from serve.triton.tensorrt import TENSORRT_MISSING, tensorrt_available

    _check_model(model_dir)
    if backend == Backend.TENSORRT and not tensorrt_available():
        raise click.ClickException(TENSORRT_MISSING)
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
@click.option(
    "--memory-budget",
    type=_BYTES,
    default=None,
    help="Memory the text-to-image engines may use, e.g. 8GiB (default: 40 % of this machine's memory).",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Largest n x steps x megapixels a generation may cost (default 64).",
)
@click.option(
    "--store",
    "--jobs",
    "store_url",
    default=None,
    help="Where jobs, the result cache and API keys live: sqlite:///PATH (default $EASEL_HOME/run/easel.db) or "
    "redis://HOST:PORT/DB (a stack across machines).",
)
@click.option("--cache-bytes", type=_BYTES, default=None, help="Result cache bound, e.g. 2GiB (default 1GiB).")
@click.option("--no-cache", is_flag=True, help="No result cache: every generation runs.")
@click.option("--detach", is_flag=True, help="Return once the stack is ready; `easel down` stops it.")
@click.option(
    "--triton-ports",
    default=",".join(map(str, TRITON_PORTS)),
    show_default=True,
    callback=lambda _ctx, _param, value: _triton_ports(value),
    help="Triton's HTTP,gRPC,metrics ports on 127.0.0.1 (0: a free port).",
)
@click.option("--grpc-port", default=GRPC_PORT, show_default=True, help="Port of the public gRPC API (0: a free port).")
@click.option("--insecure", is_flag=True, help="Serve on a non-loopback --host even with no API key (anyone may call).")
@click.option(
    "--address",
    default=None,
    help="Deploy onto a running Ray cluster (its GCS host:port) instead of starting Ray: every node started with "
    "the `triton` resource (ray start --resources='{\"triton\": 1}') gets its own Triton and the model replicas.",
)
@click.option(
    "--loras",
    "loras_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of LoRA adapters: each NAME.safetensors (diffusers/PEFT or kohya format) is adapter NAME, chosen "
    "per request.",
)
@click.option(
    "--lora-resident",
    type=click.IntRange(min=1),
    default=DEFAULT_RESIDENT,
    show_default=True,
    help="LoRA adapters each engine instance keeps loaded (least recently used go first).",
)
@click.option(
    "--ip-adapter",
    "ip_adapter_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="IP-Adapter folder: its weights (as load_ip_adapter reads them) and image_encoder/; references per request.",
)
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
    memory_budget: int | None,
    max_cost: float | None,
    store_url: str | None,
    cache_bytes: int | None,
    no_cache: bool,
    detach: bool,
    triton_ports: tuple[int, int, int],
    grpc_port: int,
    insecure: bool,
    address: str | None,
    loras_dir: Path | None,
    lora_resident: int,
    ip_adapter_dir: Path | None,
    first_request: bool,
) -> None:
    """Build what is missing, start Triton and Ray Serve, and serve the API until Ctrl-C."""
    from serve.observability.prometheus import PROMETHEUS_BINARY
    from serve.stack import OpenToTheNetwork, Stack, StackOptions, check_exposure, start_detached
    from serve.text_to_image.admission import MemoryBudgetTooSmall

    if prometheus and not PROMETHEUS_BINARY.exists():
        click.echo(f"warning: {PROMETHEUS_BINARY} is not installed (apt-get install prometheus); starting without it")
        prometheus = False
    _stop_dead_stack()
    _check_model(model_dir)
    _check_ip_adapter(ip_adapter_dir)
    if store_url is not None:
        try:
            scheme(store_url)
        except StoreURLError as error:
            raise click.ClickException(str(error)) from error
    options = StackOptions(
        host=host,
        port=port,
        model_dir=model_dir,
        repository=repository,
        serve_config=serve_config,
        dashboard_port=dashboard_port,
        prometheus=prometheus,
        prometheus_port=prometheus_port,
        **({"memory_budget_bytes": memory_budget} if memory_budget else {}),
        **({"max_cost": max_cost} if max_cost else {}),
        **({"store_url": store_url} if store_url else {}),
        **({"cache_bytes": 0 if no_cache else cache_bytes} if no_cache or cache_bytes else {}),
        insecure=insecure,
        triton_ports=triton_ports,
        grpc_port=grpc_port,
        address=address,
        loras_dir=loras_dir,
        lora_resident=lora_resident,
        ip_adapter_dir=ip_adapter_dir,
    )
    try:
        check_exposure(options)
    except OpenToTheNetwork as error:
        raise click.ClickException(str(error)) from error
    if detach:
        try:
            info = start_detached([a for a in sys.argv[1:] if a not in ("--detach", "--first-request")])
        except (RuntimeError, TimeoutError) as error:
            raise click.ClickException(str(error)) from error
        _print_endpoints(info)
        if first_request:
            _send_first_request(info.api_url)
        return
    stack = Stack(options)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        try:
            info = stack.start()
        except MemoryBudgetTooSmall as error:
            raise click.ClickException(f"{error}; give more with --memory-budget") from error
        stack.write_state()
        _print_endpoints(info)
        if first_request:
            _send_first_request(info.api_url)
        click.echo("Serving; press Ctrl-C to stop.")
        stop.wait()
        click.echo("stopping...")
    finally:
        stack.stop()
        stack.forget_state()


def _triton_ports(text: str) -> tuple[int, int, int]:
    try:
        ports = _int_list(text)
    except ValueError:
        ports = ()
    if len(ports) != 3 or not all(0 <= p <= 65535 for p in ports):
        raise click.BadParameter("three ports, HTTP,GRPC,METRICS (0: a free port)", param_hint="--triton-ports")
    return ports


def _stop_dead_stack() -> None:
    """Refuse if a stack is up; stop what a dead one left behind."""
    from serve.stack import read_state, stop_recorded

    if (state := read_state()) is not None:
        if state.alive():
            raise click.ClickException(f"Easel is up already (pid {state.pid}, {state.api_url}); `easel down` first")
        stopped = stop_recorded()
        click.echo(f"a stack recorded as running (pid {state.pid}) had died; {stopped.leftovers} leftovers stopped")


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
    """Stop the stack that `easel up` started, and every process it left behind."""
    from serve.stack import stop_recorded

    stopped = stop_recorded()
    if not stopped.recorded:
        click.echo("nothing recorded as running")
    elif stopped.was_alive:
        click.echo(f"stopped ({stopped.leftovers} leftover process(es) stopped after it)")
    else:
        click.echo(f"the recorded stack was not running (its process had died); {stopped.leftovers} leftovers stopped")


def _store_option(function):
    return click.option(
        "--store",
        "store_url",
        default=None,
        help="The stack's store (as `easel up --store`; default: the embedded SQLite file).",
    )(function)


def _key_store(store_url: str | None):
    from serve.access import open_key_store
    from serve.stores import default_url

    try:
        return open_key_store(store_url or default_url())
    except StoreURLError as error:
        raise click.ClickException(str(error)) from error


@main.group()
def keys() -> None:
    """API keys: once one exists, every route but /healthz and /readyz needs `Authorization: Bearer <key>`."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--scopes",
    default="generate,vectorize,jobs",
    show_default=True,
    help="Comma-separated: generate, vectorize, jobs, admin (admin: every route).",
)
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute.")
@click.option(
    "--cost-per-minute",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Generation cost per minute (images x steps x megapixels).",
)
@click.option("--concurrent", type=click.IntRange(min=1), default=None, help="Requests in flight at once.")
@click.option("--per-day", type=click.IntRange(min=1), default=None, help="Requests per UTC day.")
@click.option("--concurrent-jobs", type=click.IntRange(min=1), default=None, help="Unfinished background jobs at once.")
@_store_option
def keys_create(
    name: str,
    scopes: str,
    rpm: int | None,
    cost_per_minute: float | None,
    concurrent: int | None,
    per_day: int | None,
    concurrent_jobs: int | None,
    store_url: str | None,
) -> None:
    """Create a key and print it (only once: the store keeps its hash)."""
    from serve.access.keys import KeyLimits
    from serve.routes import Scope

    try:
        chosen = {Scope(s.strip()) for s in scopes.split(",") if s.strip()}
    except ValueError as error:
        raise click.BadParameter(f"{error}; choose from {', '.join(Scope)}", param_hint="--scopes") from error
    limits = KeyLimits(
        requests_per_minute=rpm,
        cost_per_minute=cost_per_minute,
        concurrent=concurrent,
        requests_per_day=per_day,
        concurrent_jobs=concurrent_jobs,
    )
    record, key = _key_store(store_url).create(name, chosen, limits)
    click.echo(f"created key {record.id} ({name}; scopes {', '.join(sorted(chosen))})")
    click.echo(f"{key}\nkeep it now: it is not shown again")


@keys.command("list")
@_store_option
def keys_list(store_url: str | None) -> None:
    """The keys: id, name, scopes, limits, created, revoked."""
    import time

    for record in _key_store(store_url).list():
        limits = ", ".join(f"{k}={v:g}" for k, v in record.limits.model_dump(exclude_none=True).items()) or "-"
        state = "revoked" if record.revoked_at else "live"
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.created_at))
        click.echo(f"{record.id}  {state:7}  {created}  {record.name}  [{','.join(sorted(record.scopes))}]  {limits}")


@keys.command("revoke")
@click.argument("key_id")
@_store_option
def keys_revoke(key_id: str, store_url: str | None) -> None:
    """Revoke a key at once (every Gateway replica refuses it from its next request)."""
    if not _key_store(store_url).revoke(key_id):
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked {key_id}")


@main.group()
def train() -> None:
    """Train models (their small outputs are committed)."""


@main.group("eval")
def evaluate() -> None:
    """Evaluate models over a folder of data."""


def _register_training_commands() -> None:
    from build_engines.text_to_image.cli import eval_generate, train_default
    from build_engines.vectorize.cli import eval_vectorize, train_vectorize

    train.add_command(train_vectorize)
    train.add_command(train_default)
    evaluate.add_command(eval_vectorize)
    evaluate.add_command(eval_generate)


_register_training_commands()


@main.group()
def bench() -> None:
    """Benchmarks: print a table and write JSON."""


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


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
@_model_option
def bench_generate(
    embedded: str,
    steps: int,
    size: int,
    repeats: int,
    concurrency: str,
    out: Path,
    device: str | None,
    adapters: int | None,
    model_dir: Path | None,
) -> None:
    """Same weights, prompts, steps and size: diffusers vs ONNX Runtime in-process vs the served stack over HTTP."""
    from serve.benchmarks import generate

    settings = generate.GenerateSettings(steps=steps, size=size, repeats=repeats, concurrency=_int_list(concurrency))
    if adapters is not None:
        from build_engines.text_to_image.build import default_model_dir
        from serve.benchmarks.adapters import AdapterBenchSettings, run_adapter_benchmark

        concurrent = max(settings.concurrency)
        adapter_settings = AdapterBenchSettings(
            adapters,
            resident=adapters // 2,
            steps=steps,
            size=size,
            concurrency=concurrent,
            requests=concurrent * repeats,
        )
        if model_dir is not None:  # a local (full-size) model: the engines in-process only, 4 rows at a time
            _check_model(model_dir)
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
    from build_engines.text_to_image.build import default_model_dir
    from serve.benchmarks.device import run_device_benchmark

    _check_model(model_dir)
    click.echo(run_device_benchmark(model_dir or default_model_dir(embedded), settings, device, out))


@bench.command("model")
@_model_option
@_embedded_option("Embedded model to serve when --model is not given.")
@click.option("--sizes", default="512", show_default=True, help="Comma-separated image sides, run in ascending order.")
@click.option("--steps", default=10, show_default=True)
@click.option("--guidance", default=7.5, show_default=True)
@click.option("--n", default=1, show_default=True, type=click.IntRange(1, 4), help="Images per request.")
@click.option("--memory-budget", type=_BYTES, default=None, help="The stack's engine memory budget (see `up`).")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/bench_model.json"), show_default=True
)
def bench_model(
    model_dir: Path | None,
    embedded: str,
    sizes: str,
    steps: int,
    guidance: float,
    n: int,
    memory_budget: int | None,
    out: Path,
) -> None:
    """Serve a model and send one request per size until one fails: end to end, per engine, peak memory."""
    from build_engines.text_to_image.build import default_model_dir
    from serve.benchmarks.model import run_benchmark

    _check_model(model_dir)
    options = {"memory_budget_bytes": memory_budget} if memory_budget else {}
    model_dir = model_dir or default_model_dir(embedded)
    click.echo(run_benchmark(model_dir, list(_int_list(sizes)), steps, guidance, out, n=n, **options))


@bench.command("jobs")
@click.option("--size", default=64, show_default=True, help="Image side of every job.")
@click.option("--steps", default=20, show_default=True, help="Steps of each high-priority job.")
@click.option("--high-jobs", default=10, show_default=True, help="High-priority jobs timed per condition.")
@click.option("--normal-jobs", default=24, show_default=True, help="Normal-priority jobs that saturate the stack.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/bench_jobs.json"), show_default=True
)
def bench_jobs(size: int, steps: int, high_jobs: int, normal_jobs: int, out: Path) -> None:
    """High-priority background jobs: latency on an idle stack and on one saturated by normal-priority jobs."""
    from serve.benchmarks.jobs import JobSettings, run_benchmark

    settings = JobSettings(size=size, steps=steps, high_jobs=high_jobs, normal_jobs=normal_jobs)
    click.echo(run_benchmark(settings, out))


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
    from serve.benchmarks import vectorize

    settings = vectorize.VectorizeSettings(
        size=size, tiers=tuple(tiers.split(",")), concurrency=_int_list(concurrency), requests=requests
    )
    click.echo(vectorize.run_benchmark(images, settings, out))


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
@click.option(
    "--docs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A scenario with stages (ramp): also write its ramp.json, ramp.md and ramp.png here (e.g. docs).",
)
def loadtest(scenario: str, images: Path, out: Path | None, docs: Path | None) -> None:
    """Run a bounded locust SCENARIO (loadtests/scenarios/*.yaml) against the stack, starting it if it is down.

    A scenario with stages (``ramp``) runs on a scratch stack with Prometheus and records TextToImage's replicas,
    requests in flight and latency over time (table, JSON, plot).
    """
    from serve import loadtest as lt
    from serve.benchmarks.ramp import run_ramp

    try:
        spec = lt.Scenario.load(scenario)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    out = out or Path("out") / "loadtest" / Path(scenario).stem
    if spec.stages:
        code, summary = run_ramp(spec, images, out, docs)
    else:
        code, summary = lt.run_scenario(spec, images, out)
    click.echo(summary)
    click.echo(f"locust CSV and HTML in {out} (exit code {code})")
    if code != 0:
        raise SystemExit(code)


@main.command()
@click.option("--clients", default=4, show_default=True, help="Concurrent clients of the background load.")
@click.option("--window", "window_s", default=20.0, show_default=True, help="Seconds each fault plays out.")
@click.option("--memory-budget", type=_BYTES, default=None, help="The stack's engine memory budget (see `up`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/chaos.json"))
def chaos(clients: int, window_s: float, memory_budget: int | None, out: Path) -> None:
    """Kill Triton, the UNet stub, a TextToImage and a Gateway replica, and send the largest requests, under load."""
    from serve.chaos import run

    options = {"memory_budget_bytes": memory_budget} if memory_budget else {}
    click.echo(run(out, clients=clients, window_s=window_s, **options))


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


def _print_endpoints(info) -> None:
    click.echo(f"""
Easel is up.
  API             {info.api_url}   (POST /v1/images/generations, GET /healthz, GET /readyz, docs at /docs)
  gRPC API        {info.grpc_address}   (easel.v1.Easel: Generate, Vectorize; serve/grpc_api/easel.proto)
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
    -d '{{"prompt": "a blue rocket icon", "size": "64x64", "seed": 7}}' \\
    > rocket.json   # data[0].b64_json is the PNG, base64-encoded ("output_format": "svg" for an SVG)
""")


def _send_first_request(api_url: str) -> None:
    from serve.access.keys import API_KEY_ENV
    from serve.stack import send_first_requests

    for first in send_first_requests(api_url):
        if first.status in (401, 403):
            click.echo(f"API keys are on: set {API_KEY_ENV} to a key with scope 'generate' to send the first request")
            return
        if first.error is not None:
            raise click.ClickException(f"first request failed: {first.status} {first.error}")
        detail = "" if first.ssim is None else f" (SSIM {first.ssim:.3f} against the PNG)"
        click.echo(
            f"First request: POST /v1/images/generations {first.body}\n"
            f"  -> {first.status} in {first.seconds:.2f} s, saved to {first.image_path}{detail}"
        )


if __name__ == "__main__":
    main()
