"""``easel``: build engines, bring the stack up or down, change its models; other groups live beside their code.

Parses and wires only: ``easel up``'s options are :class:`serve.settings.StackOptions`' fields. ``easel models`` is
here because it builds, which only an entry point may.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
from pydantic import ValidationError

from build_engines.text_to_image.cli import (
    embedded_option,
    eval_generate,
    random_controlnet,
    train_default,
    train_lcm,
)
from build_engines.text_to_image.published import PUBLISHED
from build_engines.vectorize.cli import eval_vectorize, train_vectorize
from loadtests.cli import bench, chaos, loadtest, soak
from serve import model_admin
from serve.access.cli import keys
from serve.cli_options import FOLDER, ModelFolder, ModelName, model_options, model_values, one_line_errors
from serve.errors import UnsupportedModel, invalid_input
from serve.observability.cli import dashboards
from serve.settings import MODEL_OPTION, StackOptions, check_model
from serve.stores import StoreURLError, scheme
from serve.triton.spec import Backend

logger = logging.getLogger("easel")


@click.group(commands=[keys, model_admin.loras, bench, loadtest, chaos, soak, dashboards, random_controlnet])
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Easel: text-to-image and vectorize serving on Triton Inference Server and Ray Serve."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@main.group(commands=[train_vectorize, train_default, train_lcm])
def train() -> None:
    """Train models (their small outputs are committed)."""


@main.group("eval", commands=[eval_vectorize, eval_generate])
def evaluate() -> None:
    """Evaluate models over a folder of data."""


@main.command()
@MODEL_OPTION
@model_options(StackOptions, "repository", "runtime", "precision", "vae_decoder_dir")
@embedded_option("Which embedded model to build when --model is not given.")
@click.option(
    "--backend",
    type=click.Choice([b.value for b in Backend]),
    default=Backend.PYTHON_ONNX.value,
    show_default=True,
    help="python: ONNX Runtime inside Triton's python backend (bundled CPU Triton); "
    "onnxruntime: native backend configs for the NGC Triton container; tensorrt: fp16 TensorRT plans for it (needs "
    "the gpu extra and an NVIDIA GPU).",
)
@click.option("--force", is_flag=True, help="Rebuild even when cached engines exist.")
def build(model_dir: Path | None, repository: Path | None, embedded: str, backend: str, force: bool, **how) -> None:
    """Export a diffusers model to parity-checked ONNX engines and install them in the model repository.

    Each engine's runtime, precision and error against fp32 are printed.
    """
    from build_engines.tensorrt import TENSORRT_MISSING, tensorrt_available
    from build_engines.text_to_image.build import build as build_engines
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.vectorize.repository import install_vectorize
    from serve.paths import live_repository

    repository = repository or live_repository()

    check_model(model_dir)
    if backend == Backend.TENSORRT and not tensorrt_available():
        raise click.ClickException(TENSORRT_MISSING)
    from serve.triton.runtimes import UnknownChoice

    with one_line_errors(UnknownChoice):
        engines = build_engines(
            model_dir or default_model_dir(embedded),
            repository,
            force,
            Backend(backend),
            runtime=how["runtime"],
            precision=how["precision"],
            vae_decoder=how["vae_decoder_dir"],
        )
    install_vectorize(repository, backend=Backend(backend))
    click.echo(engines.runtimes_table())
    click.echo(f"engines: {engines.path}\nrepository: {repository}")


@main.command()
@model_options(StackOptions)
@click.option("--detach", is_flag=True, help="Return once the stack is ready; `easel down` stops it.")
@click.option(
    "--detach-timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="With --detach: seconds to wait for readiness, the build included; past them the start goes on in the "
    "background (its log path is printed; `easel down` stops it).",
)
@click.option("--stack-id", hidden=True, help="The stack's id, given by `easel up --detach` (which recorded it).")
@click.option(
    "--first-request/--no-first-request",
    default=True,
    show_default=True,
    help="Send one example generation once ready and show the result.",
)
def up(detach: bool, detach_timeout: float, stack_id: str | None, first_request: bool, **settings) -> None:
    """Build what is missing, start Triton and Ray Serve, and serve the API until Ctrl-C."""
    from build_engines.text_to_image.ip_adapter import IpAdapterError, IpAdapterFolder
    from serve.observability.prometheus import PROMETHEUS_BINARY
    from serve.stack import OpenToTheNetwork, check_exposure

    values = model_values(StackOptions, settings)
    if values["prometheus"] and not PROMETHEUS_BINARY.exists():
        click.echo(f"warning: {PROMETHEUS_BINARY} is not installed (apt-get install prometheus); starting without it")
        values["prometheus"] = False
    _stop_dead_stack()
    for model_dir in values["models"].values():
        check_model(model_dir)
    with one_line_errors(IpAdapterError, StoreURLError, OpenToTheNetwork):
        if values["ip_adapter_dir"] is not None:  # one without its weights or image encoder: refused now
            IpAdapterFolder.read(values["ip_adapter_dir"]).state_dict()
        if values["store_url"] is not None:
            scheme(values["store_url"])
        try:
            options = StackOptions(**values)
        except ValidationError as error:  # e.g. an --experiment whose weights do not sum to 1
            raise click.ClickException(invalid_input(error).message) from None
        check_exposure(options)
    if detach:
        _up_detached(detach_timeout, first_request)
    else:
        _up_here(options, first_request, stack_id)


def _up_detached(timeout_s: float, first_request: bool) -> None:
    """Start ``easel up`` in the background, showing its progress; print the endpoints once it is ready."""
    from serve.stack import StillStarting, start_detached

    try:
        with one_line_errors(RuntimeError, TimeoutError):
            info = start_detached(_detached_argv(sys.argv[1:]), timeout_s=timeout_s, progress=click.echo)
    except StillStarting as still:  # not a failure: the start goes on
        click.echo(str(still))
        return
    _print_endpoints(info)
    if first_request:
        _send_first_request(info.api_url)


def _up_here(options: StackOptions, first_request: bool, stack_id: str | None = None) -> None:
    """Run the stack in this process until SIGINT or SIGTERM, recorded from the first moment for `easel down`."""
    from serve.processes.run_state import READY
    from serve.stack import Stack
    from serve.triton.memory import MemoryBudgetTooSmall
    from serve.triton.residency import DoesNotFit

    stack = Stack(options, stack_id)
    stop = threading.Event()

    def on_signal(*_) -> None:
        stop.set()
        if stack.info.phase != READY:  # building or starting: stop where it is (`easel down`, Ctrl-C)
            raise StopAsked(stack.info.phase)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    try:
        stack.record()  # from now on `easel down` finds it, in every phase
        budget = one_line_errors(MemoryBudgetTooSmall, hint="; give more with --memory-budget")
        with one_line_errors(DoesNotFit), budget:
            info = stack.start()
        _print_endpoints(info)
        if first_request:
            _send_first_request(info.api_url)
        click.echo("Serving; press Ctrl-C to stop.")
        stop.wait()
        click.echo("stopping...")
    except StopAsked as asked:
        click.echo(f"stopping while {asked}...")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: None)  # a second signal does not cut the stop short
        stack.stop()
        stack.forget_state()
    if stack.info.phase != READY:  # stopped while starting, on request: exit now
        logging.shutdown()
        os._exit(0)  # not through the interpreter's teardown (torch's takes seconds on a busy machine)


class StopAsked(BaseException):
    """SIGTERM or SIGINT while the stack builds or starts: raised where ``easel up`` is, so it stops at once.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way takes it for a failure.
    """


def _detached_argv(argv: list[str]) -> list[str]:
    """``easel up``'s command line for the process ``--detach`` starts: without the options only the parent takes."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg in ("--detach", "--first-request") or arg.startswith("--detach-timeout="):
            skip = False
            continue
        skip = arg == "--detach-timeout"
        if not skip:
            kept.append(arg)
    return kept


def _stop_dead_stack() -> None:
    """Refuse if a stack is up or starting; stop what a dead one left behind."""
    from serve.processes.run_state import READY, read_state, stop_recorded

    if (state := read_state()) is not None and state.pid != os.getpid():  # its own: recorded by --detach's parent
        if state.alive() and state.phase == READY:
            raise click.ClickException(f"Easel is up already (pid {state.pid}, {state.api_url}); `easel down` first")
        if state.alive():
            raise click.ClickException(
                f"Easel is starting already ({state.phase}, pid {state.pid}, {time.time() - state.started_at:.0f} s "
                "in): wait for it (`easel models list` answers once it is up), or `easel down` stops it"
            )
        stopped = stop_recorded()
        click.echo(f"a stack recorded as running (pid {state.pid}) had died; {stopped.leftovers} leftovers stopped")


@main.command()
def down() -> None:
    """Stop the stack that `easel up` started, in any phase, and every process it left behind."""
    from serve.processes.run_state import READY, stop_recorded

    stopped = stop_recorded()
    ran = f"; it ran {', '.join(stopped.processes)}" if stopped.processes else ""
    ran += "".join(f"; stopped {helper}" for helper in stopped.helpers)
    if not stopped.recorded:
        click.echo("nothing recorded as running")
    elif stopped.was_alive:
        click.echo(
            f"stopped `easel up` (pid {stopped.pid}){'' if stopped.phase == READY else f' while {stopped.phase}'}{ran} "
            f"({stopped.leftovers} leftover process(es) stopped after it)"
        )
    else:
        click.echo(f"the recorded stack was not running (its process had died); {stopped.leftovers} leftovers stopped")


@main.command("random-model")
@click.argument("name", type=click.Choice(PUBLISHED))
@click.argument("out_dir", type=FOLDER)
@click.option("--without-t5", is_flag=True, help="sd3: leave T5 out, as diffusers allows (text_encoder_3=None).")
def random_model(name: str, out_dir: Path, without_t5: bool) -> None:
    """Create a full-size published architecture with random weights in OUT_DIR.

    sd15: SD 1.5, sdxl: SDXL base 1.0, sd3: SD3 medium, flux: FLUX.1 dev. Its configs are committed in
    build_engines/text_to_image/published/; the CLIP tokenizers are CLIP's real BPE.
    """
    from build_engines.text_to_image.published import create_random_model

    try:
        click.echo(f"created {create_random_model(name, out_dir, without_t5=without_t5)}")
    except ValueError as error:
        raise click.UsageError(str(error)) from error


def _print_endpoints(info) -> None:
    click.echo(f"""
Easel is up.
  API             {info.api_url}   (POST /v1/images/generations and /edits, GET /healthz, /readyz, docs at /docs)
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


# -- easel models: build here, then the running stack's admin routes (serve.model_admin) ---------------------------


def built_engines(model_dir: Path) -> Path:
    """``model_dir``'s engine folder, built (or found in the engine cache) and measured, not installed."""
    from build_engines.text_to_image.build import build

    with one_line_errors(UnsupportedModel):
        return build(model_dir, repository=None).path


def _said(model: dict) -> str:
    state = "loaded" if model["loaded"] else "loads on its first request"
    return f"{model['id']}: {model['family']}, version {model['version']}, {state}"


@main.group()
def models() -> None:
    """The running stack's models: list, add, replace, remove (a request finishes on the version it began on)."""


@models.command("list")
def models_list() -> None:
    """The models the running stack serves (the default first)."""
    for model in model_admin.call(model_admin.stack_api(), "GET", "/v1/models")["data"]:
        click.echo(_said(model))


MODEL_ARGUMENT = click.argument("model", type=ModelFolder(()), metavar="NAME=DIR")


def _built_and_sent(change: Callable[[str, str, Path], dict], model: tuple[str, Path]) -> str:
    """Build the engines of ``model`` (NAME, DIR) and send them to the stack as ``change``; what it answered."""
    from serve.processes.run_state import working_for_the_stack

    name, model_dir = model
    api_url = model_admin.stack_api()  # first: with no stack up, nothing is built
    with working_for_the_stack(f"easel models: building {model_dir}"):  # `easel down` stops it with the stack
        engine_dir = built_engines(model_dir)
    return _said(change(api_url, name, engine_dir))


@models.command("add")
@MODEL_ARGUMENT
def models_add(model: tuple[str, Path]) -> None:
    """Build DIR's engines and serve them as a new model NAME (DIR alone: named after its folder)."""
    click.echo(f"added {_built_and_sent(model_admin.add, model)}")


@models.command("replace")
@MODEL_ARGUMENT
def models_replace(model: tuple[str, Path]) -> None:
    """Build DIR's engines and serve them as model NAME's next version; the old one finishes what it started."""
    click.echo(f"replaced {_built_and_sent(model_admin.replace, model)}")


@models.command("remove")
@click.argument("name", type=ModelName())
def models_remove(name: str) -> None:
    """Stop serving model NAME: its requests in flight finish; its background jobs not started fail naming it."""
    removed = model_admin.remove(model_admin.stack_api(), name)
    click.echo(f"removed {removed['id']} (version {removed['version']} unloads once its requests have ended)")


# -- easel vectorize models: the running stack's vectorize versions (serve.vectorize.version_admin) -----------------


@main.group()
def vectorize() -> None:
    """The running stack's vectorize ensemble."""


@vectorize.group("models")
def vectorize_models() -> None:
    """Vectorize model versions: list, add, replace (or roll back), remove; each a trained folder."""


def _version_said(entry: dict) -> str:
    current = ", current" if entry["current"] else ""
    return f"vectorize version {entry['version']} ({entry['triton_model']}{current}): {entry['trained_dir']}"


@vectorize_models.command("list")
def vectorize_models_list() -> None:
    """The vectorize versions installed (the current one answers requests without model_version)."""
    for entry in model_admin.call(model_admin.stack_api(), "GET", "/v1/vectorize/models")["data"]:
        click.echo(_version_said(entry))


@vectorize_models.command("add")
@click.argument("trained_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def vectorize_models_add(trained_dir: Path) -> None:
    """Install TRAINED_DIR (`easel train vectorize`'s output) as a new version beside the current one."""
    body = {"trained_dir": str(trained_dir.resolve())}
    click.echo(
        f"added {_version_said(model_admin.call(model_admin.stack_api(), 'POST', '/v1/vectorize/models', body))}"
    )


@vectorize_models.command("replace")
@click.argument("target")
def vectorize_models_replace(target: str) -> None:
    """Make TARGET current: a trained folder (installed as a new version) or an installed version's number."""
    body = {"version": int(target)} if target.isdigit() else {"trained_dir": str(Path(target).resolve())}
    entry = model_admin.call(model_admin.stack_api(), "PUT", "/v1/vectorize/models", body)
    click.echo(f"now serving {_version_said(entry)}")


@vectorize_models.command("remove")
@click.argument("version", type=int)
def vectorize_models_remove(version: int) -> None:
    """Stop serving VERSION (not the current one); it is unloaded once its requests have ended."""
    model_admin.call(model_admin.stack_api(), "DELETE", f"/v1/vectorize/models/{version}")
    click.echo(f"removed vectorize version {version}")


@vectorize.command("export-feedback")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The folder written.")
@click.option("--store", "store_url", metavar="URL", help="The stack's store (default: the embedded one).")
def vectorize_export_feedback(out: Path, store_url: str | None) -> None:
    """Write the recorded vectorize answers: OUT/records.jsonl, and OUT/images/ (`easel train vectorize --data`)."""
    from serve.stores import default_url
    from serve.vectorize.records import export, open_record_store

    counts = export(open_record_store(store_url or default_url()), out)
    click.echo(f"wrote {counts['rows']} records ({counts['images']} with their image) to {counts['out']}")


if __name__ == "__main__":
    main()
