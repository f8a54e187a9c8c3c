"""``easel``: build engines, bring the stack up or down, change its models; other groups live beside their code.

Parses and wires only: ``easel up``'s options are :class:`serve.settings.StackOptions`' fields. ``easel models`` is
here because it builds, which only an entry point may.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
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
from serve import model_admin
from serve.access.cli import keys
from serve.benchmarks.cli import bench, chaos, loadtest, soak
from serve.cli_options import FOLDER, ModelFolder, model_options, model_values, one_line_errors
from serve.errors import UnsupportedModel, invalid_input
from serve.observability.cli import dashboards
from serve.settings import MODEL_OPTION, StackOptions, check_model
from serve.stores import StoreURLError, scheme
from serve.triton.spec import Backend

logger = logging.getLogger("easel")


@click.group(commands=[keys, bench, loadtest, chaos, soak, dashboards, random_controlnet])
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
def build(model_dir: Path | None, repository: Path, embedded: str, backend: str, force: bool, **how) -> None:
    """Export a diffusers model to parity-checked ONNX engines and install them in the model repository.

    Each engine's runtime, precision and error against fp32 are printed.
    """
    from build_engines.tensorrt import TENSORRT_MISSING, tensorrt_available
    from build_engines.text_to_image.build import build as build_engines
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.vectorize.repository import install_vectorize

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
    "--first-request/--no-first-request",
    default=True,
    show_default=True,
    help="Send one example generation once ready and show the result.",
)
def up(detach: bool, first_request: bool, **settings) -> None:
    """Build what is missing, start Triton and Ray Serve, and serve the API until Ctrl-C."""
    from build_engines.text_to_image.ip_adapter import IpAdapterError, IpAdapterFolder
    from serve.observability.prometheus import PROMETHEUS_BINARY
    from serve.stack import OpenToTheNetwork, Stack, check_exposure, start_detached
    from serve.triton.memory import MemoryBudgetTooSmall
    from serve.triton.residency import DoesNotFit

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
        with one_line_errors(RuntimeError, TimeoutError):
            info = start_detached([a for a in sys.argv[1:] if a not in ("--detach", "--first-request")])
        _print_endpoints(info)
        if first_request:
            _send_first_request(info.api_url)
        return
    stack = Stack(options)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        budget = one_line_errors(MemoryBudgetTooSmall, hint="; give more with --memory-budget")
        with one_line_errors(DoesNotFit), budget:
            info = stack.start()
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


def _stop_dead_stack() -> None:
    """Refuse if a stack is up; stop what a dead one left behind."""
    from serve.stack import read_state, stop_recorded

    if (state := read_state()) is not None:
        if state.alive():
            raise click.ClickException(f"Easel is up already (pid {state.pid}, {state.api_url}); `easel down` first")
        stopped = stop_recorded()
        click.echo(f"a stack recorded as running (pid {state.pid}) had died; {stopped.leftovers} leftovers stopped")


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


if __name__ == "__main__":
    main()


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
    name, model_dir = model
    api_url = model_admin.stack_api()  # first: with no stack up, nothing is built
    return _said(change(api_url, name, built_engines(model_dir)))


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
@click.argument("name")
def models_remove(name: str) -> None:
    """Stop serving model NAME: its requests in flight finish; its background jobs not started fail naming it."""
    removed = model_admin.remove(model_admin.stack_api(), name)
    click.echo(f"removed {removed['id']} (version {removed['version']} unloads once its requests have ended)")
