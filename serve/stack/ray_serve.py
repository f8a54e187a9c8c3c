"""Ray and Ray Serve for a stack: Ray started with Easel's settings, the app deployed, ``/readyz`` awaited."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from serve.processes.gcs import storage_env
from serve.processes.loopback import API_HOST_ENV
from serve.processes.run_state import environ
from serve.processes.tls import CERT_ENV, KEY_ENV
from serve.settings import StackOptions

logger = logging.getLogger(__name__)

# Ray's defaults suit a cluster. Serve's controller loops every 0.1 s and every replica exports metrics every 0.1 s:
# on one small machine that polling takes CPU from the engines (an idle stack: 17 -> 13 % of a core; Prometheus
# scrapes every 5 s anyway). Ray passes a result over 100 KiB (an encoded image) through the object store; inline in
# the reply instead, proxy + Gateway + TextToImage use 56 -> 42 ms CPU per one-step request, and 16 MiB holds the
# largest response (4 PNGs of 1024x1024). See docs/PERFORMANCE.md. The proxy's own failure answers (a replica that
# died with the request) get Easel's JSON error shape from a middleware the proxy loads (serve.wire). Ray on Linux
# binds its own servers (GCS, raylet, workers, agents) to every interface; its single-machine mode (the one it uses on
# macOS) keeps them on 127.0.0.1. Ray reads that switch when imported. Ray names its processes (``ray::DashboardAgent``)
# with setproctitle, which by default writes the title over the process's environment block, so ``/proc/PID/environ``
# lost the stack's mark and ``easel down`` could not find Ray's agents (they outlived the stack); ``SPT_NOENV`` makes
# it write within the command line only. Ray starts a worker per CPU when the first driver connects, for tasks Easel
# never sends (every replica is an actor with a worker of its own): two ``ray::IDLE`` processes per stack, 1.1 CPU-s
# at start and 1.4 % of a core idle (``easel bench idle``), gone with ``prestart_worker_first_driver=0``. Serve's
# controller kills a proxy that is not ready after three checks of 5 s and starts another from scratch. Ray runs its
# workers at niceness 15, so beside busy processes of niceness 0 (CI: the other test worker, a loaded stack's Triton)
# a proxy took over 15 s to start, was killed, and the stack's start failed; three checks of 60 s let it finish (the
# start's own timeout still bounds it: :func:`_start_serve`). A value already in the environment wins.
RAY_ENV = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.wire:proxy_middlewares",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_max_direct_call_object_size": str(16 << 20),
    "RAY_prestart_worker_first_driver": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "SPT_NOENV": "1",
}
SINGLE_MACHINE_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",)
"""Left out when deploying onto a cluster off loopback (`address`): its nodes have addresses of their own. A cluster
on loopback (nodes started with 127.0.0.1) needs it: without it Ray rewrites 127.0.0.1 to the machine's address."""
WORKER_SETUP_HOOK = "serve.processes.ray_worker.setup"
SERVE_STARTED = "Serve's controller and proxies started"
APP_BUILT = "Serve's applications built (their deployments known)"
"""Logged by :func:`deploy` as its steps end (``easel bench start`` times them)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_ray(opts: StackOptions, stack_id: str, dashboard_port: int, gcs_port: int):
    """Start (or join, with ``opts.address``) Ray with Easel's settings; Ray's context and the dashboard's URL.

    ``gcs_port``: its own head's GCS's (chosen with the stack's other ports, so none is the same).
    """
    one_machine = opts.address is None or is_loopback(opts.address.rsplit(":", 1)[0])
    for name, value in RAY_ENV.items():
        if one_machine or name not in SINGLE_MACHINE_ENV:
            os.environ.setdefault(name, value)  # read by Ray when imported, inherited by its workers
    os.environ[API_HOST_ENV] = opts.host
    for name in (CERT_ENV, KEY_ENV):  # the gRPC proxy's certificate (serve.processes.tls), this start's or none
        os.environ.pop(name, None)
    os.environ.update(opts.tls_env())
    import ray

    if opts.address:  # a cluster's workers get the settings from the job (its nodes were started elsewhere)
        env = {name: os.environ[name] for name in (*RAY_ENV, API_HOST_ENV, CERT_ENV, KEY_ENV) if name in os.environ}
        context = ray.init(
            address=opts.address,
            logging_level=logging.WARNING,
            log_to_driver=False,
            runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK, "env_vars": env},
        )
        return context, f"http://{context.dashboard_url}" if context.dashboard_url else None
    gcs_env = storage_env(opts.store, opts.run_dir, stack_id, gcs_port)
    shutil.rmtree(opts.run_dir / "gcs", ignore_errors=True)  # a GCS's state belongs to its own Ray
    with environ(gcs_env):  # read by the GCS Ray starts
        context = ray.init(
            address="local",  # its own Ray always: with no address Ray joins the latest one this machine started
            num_cpus=max(4, os.cpu_count() or 1),
            include_dashboard=opts.dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=True,
            _temp_dir=None,
            runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK},
        )
    _stop_log_monitor()
    return context, f"http://{context.dashboard_url}" if opts.dashboard and context.dashboard_url else None


@contextmanager
def sigterm_kept() -> Iterator[None]:
    """Keep this process's SIGTERM handler across the block (``ray.init``, which installs Ray's own).

    Ray's handler waits up to 30 s for the node to drain, kills Ray's processes and exits, so a SIGTERM from
    ``easel down`` skipped ``easel up``'s orderly :meth:`Stack.stop`. The stack's owner decides what SIGTERM does.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _stop_log_monitor() -> None:
    """Stop Ray's log monitor, which streams worker logs to drivers: with ``log_to_driver`` off nothing reads them.

    It still polls the log folder ten times a second (1 % of a core here). The log files stay.
    """
    import ray

    try:
        ray._private.worker.global_worker.node.kill_log_monitor()
    except Exception as error:  # Ray's private API: if it moves, the stack runs on with the monitor
        logger.warning("Ray's log monitor left running: %s", error)


def deploy(config, timeout_s: float) -> None:
    """Deploy a Serve config the way ``serve run CONFIG`` does, and wait until every application runs.

    It watches the controller's status overview, not ``serve.status()``: that one's details validate each
    deployment's request router by pickling it, which scans every imported module (a second of CPU a look in a
    process that has torch and diffusers loaded, twice a second while the replicas start).
    """
    client = _start_serve(config)
    logger.info(SERVE_STARTED)
    client.deploy_apps(config, _blocking=False)
    deadline, built = time.monotonic() + timeout_s, False
    while time.monotonic() < deadline:
        apps = client.list_serve_statuses()
        failed = {app.name: app.app_status.message for app in apps if app.app_status.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"Serve deployment failed: {failed}")
        if not built and apps and all(app.deployment_statuses for app in apps):
            built = True
            logger.info(APP_BUILT)
        if apps and all(app.app_status.status == "RUNNING" for app in apps):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Serve applications not running after {timeout_s:.0f} s")


def _start_serve(config):
    """Start Serve's controller and proxies; the controller's client.

    ``serve.start`` waits a fixed minute for its first proxy, and fails if the controller replaced a proxy that was not
    ready in time. On a busy machine that is not a failed start: the controller runs and starts its proxy again, so
    the stack goes on, and :func:`wait_until_ready` (through the proxy, with the start's own timeout) waits for it.
    """
    from ray.exceptions import RayActorError
    from ray.serve._private import api as serve_api

    options = {
        "http_options": config.http_options.model_dump(),
        "grpc_options": config.grpc_options.model_dump(),
        "proxy_location": config.proxy_location,
    }
    try:
        return serve_api.serve_start(**options)
    except (TimeoutError, RayActorError) as error:
        logger.warning("Serve's proxy not ready yet (%s); waiting for it through the API", str(error).splitlines()[0])
        return serve_api.serve_start(**options)  # the controller runs: this is its client


def wait_until_ready(api_url: str, timeout_s: float, verify: ssl.SSLContext | bool = True) -> None:
    """Poll ``/readyz`` until it answers 200; raise ``TimeoutError`` with the last answer if it does not.

    ``verify``: how an HTTPS API's certificate is checked (:func:`serve.processes.tls.client_verify`).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=5, verify=verify) as client:  # one client: each new one builds a TLS context (26 ms)
        while time.monotonic() < deadline:
            try:
                response = client.get(f"{api_url}/readyz")
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as error:
                last = repr(error)
            time.sleep(0.5)
    raise TimeoutError(f"{api_url} not ready after {timeout_s:.0f} s: {last}")
