"""``easel up`` and ``easel down``: the stack started here or in the background, and stopped in any phase.

Parses and wires only (``easel up``'s options are :class:`serve.settings.StackOptions`' fields); the stack itself is
:class:`serve.stack.Stack`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import click
from pydantic import ValidationError

from serve.cli.fields import model_options, model_values
from serve.cli.options import check_model, one_line_errors
from serve.errors import invalid_input
from serve.settings import StackOptions
from serve.stores import StoreUnreachable, StoreURLError, check_store, scheme


@click.command()
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
    from serve.processes.ports import PortInUse, check_free
    from serve.stack import OpenToTheNetwork, check_exposure

    values = model_values(StackOptions, settings)
    if values["prometheus"] and not PROMETHEUS_BINARY.exists():
        click.echo(f"warning: {PROMETHEUS_BINARY} is not installed (apt-get install prometheus); starting without it")
        values["prometheus"] = False
    _stop_dead_stack()
    for model_dir in values["models"].values():
        check_model(model_dir)
    with one_line_errors(IpAdapterError, StoreURLError, OpenToTheNetwork, PortInUse, StoreUnreachable):
        for folder in values["ip_adapters"].values():  # one without its weights or image encoder: refused now
            IpAdapterFolder.read(folder).state_dict()
        if values["store_url"] is not None:
            scheme(values["store_url"])
        try:
            options = StackOptions(**values)
        except ValidationError as error:  # e.g. an --experiment whose weights do not sum to 1
            raise click.ClickException(invalid_input(error).message) from None
        check_exposure(options)
        check_store(options.store)
        if options.address is None and stack_id is None:  # --detach's child: its parent checked them
            check_free(_ports(options))
    _say_model_table(options)
    if detach:
        _up_detached(detach_timeout, first_request)
    else:
        _up_here(options, first_request, stack_id)


def _ports(options: StackOptions) -> list[tuple[str, str, int]]:
    """The fixed ports a start on this machine binds: option, host, port (0: a free one, not checked)."""
    loopback = "127.0.0.1"
    wanted = [("--port", options.host, options.port), ("--grpc-port", options.host, options.grpc_port)]
    wanted += [("--triton-ports", loopback, port) for port in options.triton_ports]
    if options.dashboard:
        wanted.append(("--dashboard-port", loopback, options.dashboard_port))
    if options.prometheus:
        wanted.append(("--prometheus-port", loopback, options.prometheus_port))
    return wanted


def _say_model_table(options: StackOptions) -> None:
    """Say what this command line changes in the model table the run folder kept (the models it names win).

    A ``--remote`` named as a model the kept table serves is refused here, before anything is built, and so is a
    remote the kept table holds whose key_env ``--remote-key-envs`` does not declare (its key is never read).
    """
    from serve.models.table import ModelTable, start_said
    from serve.remote.settings import RemoteBackend

    kept = None if options.reset_models else ModelTable.kept(options.run_dir)
    if kept is not None:
        with one_line_errors(ValueError):
            kept.declared(options.remote_declarations(), options.fallbacks)
            for name in sorted(kept.remotes.keys() - options.remotes.keys()):  # the command line's win for their names
                try:
                    RemoteBackend.model_validate(kept.remotes[name]).check_key_env(options.remote_key_envs)
                except ValueError as error:
                    raise ValueError(f"remote {name} of the kept model table: {error}") from None
    if said := start_said(kept, list(options.served), named=bool(options.models)):
        click.echo(said)


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
        _send_first_request(info)


def _up_here(options: StackOptions, first_request: bool, stack_id: str | None = None) -> None:
    """Run the stack in this process until SIGINT or SIGTERM, recorded from the first moment for `easel down`."""
    from serve.processes import ProcessStartError
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
        with one_line_errors(DoesNotFit, ProcessStartError), budget:
            info = stack.start()
        _print_endpoints(info)
        if first_request:
            _send_first_request(info)
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


@click.command()
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


@click.command()
def status() -> None:
    """What the running stack serves: its models, endpoints, keys, jobs, run folder and uptime.

    Exit code 0 when a stack is up, 4 while one starts, 3 when none runs.
    """
    from serve.paths import run_dir
    from serve.processes.run_state import READY
    from serve.stack.status import NOT_RUNNING, STARTING, stack_status

    found = stack_status()
    if found is None:
        click.echo(f"no Easel stack runs (run folder {run_dir()}); `easel up` starts one")
        sys.exit(NOT_RUNNING)
    click.echo("\n".join(found.lines()))
    if found.info.phase != READY:
        sys.exit(STARTING)


def _print_endpoints(info) -> None:
    tls = f"\n  TLS             {info.tls_cert}   (HTTPS and gRPC over TLS)" if info.tls_cert else ""
    cacert = f" --cacert {info.tls_cert}" if info.tls_cert else ""
    click.echo(f"""
Easel is up.
  API             {info.api_url}   (POST /v1/images/generations and /edits, GET /healthz, /readyz, docs at /docs)
  gRPC API        {info.grpc_address}   (easel.v1.Easel: Generate, Vectorize; serve/grpc_api/easel.proto){tls}
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
  curl -s{cacert} {info.api_url}/v1/images/generations -H 'Content-Type: application/json' \\
    -d '{{"prompt": "a blue rocket icon", "size": "64x64", "seed": 7}}' \\
    > rocket.json   # data[0].b64_json is the PNG, base64-encoded ("output_format": "svg" for an SVG)
""")


def _send_first_request(info) -> None:
    from serve.access.keys import API_KEY_ENV
    from serve.stack import send_first_requests

    for first in send_first_requests(info.api_url, tls_cert=info.tls_cert):
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
