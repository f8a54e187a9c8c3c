"""The whole stack on one machine: engines built, Triton started, Ray Serve running the Easel app."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
import yaml
from pydantic import BaseModel, Field

from serve.observability.prometheus import PrometheusError, PrometheusServer, ray_targets_file, render_config
from serve.paths import MODEL_REPOSITORY, SERVE_CONFIG, easel_home
from serve.text_to_image.families import family_of_engines
from serve.triton.server import TritonServer, free_port, free_ports, stop_process

logger = logging.getLogger(__name__)

APP_NAME = "easel"

# Ray's defaults suit a cluster. Serve's controller loops every 0.1 s and every replica exports metrics every 0.1 s:
# on one small machine that polling takes CPU from the engines (an idle stack: 17 -> 13 % of a core; Prometheus
# scrapes every 5 s anyway). Ray passes a result over 100 KiB (an encoded image) through the object store; inline in
# the reply instead, proxy + Gateway + TextToImage use 56 -> 42 ms CPU per one-step request, and 16 MiB holds the
# largest response (4 PNGs of 1024x1024). See docs/PERFORMANCE.md.
# A value already in the environment wins.
RAY_ENV = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_max_direct_call_object_size": str(16 << 20),
}


class StackOptions(BaseModel):
    """What ``easel up`` starts, and where."""

    host: str = Field("127.0.0.1", description="Address of the public API.")
    port: int = Field(8000, ge=0, le=65535, description="Port of the public API (0: a free port).")
    model_dir: Path | None = Field(None, description="Diffusers model folder; None: the embedded default.")
    repository: Path = Field(MODEL_REPOSITORY, description="Triton model repository.")
    serve_config: Path = Field(SERVE_CONFIG, description="Ray Serve config YAML.")
    dashboard: bool = Field(True, description="Start the Ray dashboard.")
    dashboard_port: int = Field(8265, ge=0, le=65535, description="Ray dashboard port (0: a free port).")
    run_dir: Path = Field(default_factory=lambda: easel_home() / "run", description="Logs and state.")
    prometheus: bool = Field(False, description="Start /usr/bin/prometheus scraping Triton and Ray.")
    prometheus_port: int = Field(9090, ge=0, le=65535, description="Prometheus port on 127.0.0.1 (0: a free port).")
    scrape_interval_s: float = Field(5.0, ge=1, le=60, description="Prometheus scrape interval.")


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack listens; written to ``state.json`` for ``easel down``."""

    pid: int
    api_url: str
    triton_http_url: str
    triton_grpc_url: str
    triton_metrics_url: str
    triton_pid: int
    dashboard_url: str | None
    engine_dir: str
    prometheus_url: str | None = None
    prometheus_pid: int | None = None


def load_serve_config(path: Path, engine_dir: Path, triton_grpc_url: str, host: str, port: int):
    """The Serve config at ``path`` with the app's ``args`` and the HTTP address filled in."""
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text())
    raw.setdefault("http_options", {}).update(host=host, port=port)
    for app in raw["applications"]:
        app.setdefault("args", {}).update(engine_dir=str(engine_dir), triton_grpc_url=triton_grpc_url)
    return ServeDeploySchema.model_validate(raw)


class Stack:
    """Start and stop Triton plus Ray Serve in this process (``easel up`` and the integration tests)."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.triton: TritonServer | None = None
        self.prometheus: PrometheusServer | None = None
        self.ray_session_dir: Path | None = None
        self.info: StackInfo | None = None

    def start(self, timeout_s: float = 300.0) -> StackInfo:
        """Build what is missing, start Triton and Ray Serve, and wait until ``/readyz`` answers 200."""
        from build_engines.text_to_image.build import build
        from build_engines.vectorize.repository import install_vectorize

        opts = self.options
        engine_dir = build(opts.model_dir, opts.repository)
        install_vectorize(opts.repository)
        engines = tuple(family_of_engines(engine_dir).specs)
        self.triton = TritonServer(opts.repository, opts.run_dir / "triton.log").start(engines)
        spare = iter(free_ports(2, opts.host))  # together, so the two cannot be the same port
        port = opts.port or next(spare)
        dashboard_url = self._start_ray(opts.dashboard_port or next(spare))
        config = load_serve_config(opts.serve_config, engine_dir, self.triton.endpoints.grpc_url, opts.host, port)
        _deploy(config, timeout_s)
        e = self.triton.endpoints
        self.info = StackInfo(
            os.getpid(),
            f"http://{opts.host}:{port}",
            e.http_url,
            e.grpc_url,
            e.metrics_url,
            self.triton.process.pid,
            dashboard_url,
            str(engine_dir),
        )
        if opts.prometheus:
            self._start_prometheus()
        wait_until_ready(self.info.api_url, timeout_s)
        return self.info

    def _start_prometheus(self) -> None:
        """Start Prometheus on Triton's and Ray's metrics; a failure is logged, the stack serves on without it."""
        opts = self.options
        work_dir = opts.run_dir / "prometheus"
        metrics_address = f"{self.triton.endpoints.host}:{self.triton.endpoints.metrics_port}"
        config = render_config(
            metrics_address, ray_targets_file(self.ray_session_dir, opts.dashboard, work_dir), opts.scrape_interval_s
        )
        server = PrometheusServer(config, work_dir, "127.0.0.1", opts.prometheus_port or free_port())
        try:
            self.prometheus = server.start()
        except PrometheusError as error:
            logger.error("Prometheus not started: %s", error)
            return
        self.info = replace(self.info, prometheus_url=server.url, prometheus_pid=server.process.pid)

    def _start_ray(self, dashboard_port: int) -> str | None:
        import ray

        opts = self.options
        for name, value in RAY_ENV.items():
            os.environ.setdefault(name, value)  # inherited by Ray's workers, so set before ray.init
        context = ray.init(
            num_cpus=max(4, os.cpu_count() or 1),
            include_dashboard=opts.dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=True,
            _temp_dir=None,
        )
        self.ray_session_dir = Path(context.address_info["session_dir"])
        _stop_log_monitor()
        return f"http://{context.dashboard_url}" if opts.dashboard and context.dashboard_url else None

    def stop(self) -> None:
        """Tear down Ray Serve, Ray and Triton (whatever of them was started)."""
        import ray
        from ray import serve

        if self.prometheus is not None:
            self.prometheus.stop()
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        if self.triton is not None:
            self.triton.stop()
        logger.info("stack stopped")

    def write_state(self) -> Path:
        """Record where the stack runs, for ``easel down`` and ``easel loadtest``."""
        path = self.options.run_dir / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self.info), indent=2))
        return path


def _stop_log_monitor() -> None:
    """Stop Ray's log monitor, which streams worker logs to drivers: with ``log_to_driver`` off nothing reads them.

    It still polls the log folder ten times a second (1 % of a core here). The log files stay.
    """
    import ray

    try:
        ray._private.worker.global_worker.node.kill_log_monitor()
    except Exception as error:  # Ray's private API: if it moves, the stack runs on with the monitor
        logger.warning("Ray's log monitor left running: %s", error)


def _deploy(config, timeout_s: float) -> None:
    """Deploy a Serve config the way ``serve run CONFIG`` does, and wait until every application runs."""
    from ray import serve
    from ray.serve._private import api as serve_api

    client = serve_api.serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location)
    client.deploy_apps(config, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        failed = {name: app.message for name, app in apps.items() if app.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"Serve deployment failed: {failed}")
        if apps and all(app.status == "RUNNING" for app in apps.values()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Serve applications not running after {timeout_s:.0f} s")


def wait_until_ready(api_url: str, timeout_s: float) -> None:
    """Poll ``/readyz`` until it answers 200; raise ``TimeoutError`` with the last answer if it does not."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{api_url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as error:
            last = repr(error)
        time.sleep(0.5)
    raise TimeoutError(f"{api_url} not ready after {timeout_s:.0f} s: {last}")


def read_state(run_dir: Path | None = None) -> StackInfo | None:
    """The state of a stack started with ``easel up``, if one is recorded."""
    path = (run_dir or easel_home() / "run") / "state.json"
    return StackInfo(**json.loads(path.read_text())) if path.exists() else None


def stop_recorded(run_dir: Path | None = None) -> bool:
    """Stop the stack recorded in ``state.json`` (its ``easel up`` process, then its Triton if left over)."""
    run_dir = run_dir or easel_home() / "run"
    info = read_state(run_dir)
    if info is None:
        return False
    stop_process(info.pid, timeout_s=60)
    stop_process(info.triton_pid, timeout_s=10)
    if info.prometheus_pid is not None:
        stop_process(info.prometheus_pid, timeout_s=10)
    (run_dir / "state.json").unlink(missing_ok=True)
    return True
