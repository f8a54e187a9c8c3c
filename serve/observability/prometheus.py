"""Debian's ``prometheus`` for a running stack: the scrape config rendered from ``deployments/``, start, query, stop."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import httpx
import yaml

from serve.paths import PROJECT_ROOT
from serve.processes import ManagedProcess, ProcessStartError

logger = logging.getLogger(__name__)

PROMETHEUS_BINARY = Path("/usr/bin/prometheus")
PROMETHEUS_CONFIG = PROJECT_ROOT / "deployments" / "prometheus" / "prometheus.yml"
ALERT_RULES = PROMETHEUS_CONFIG.parent / "alerts.yml"
ALERT_TESTS = PROMETHEUS_CONFIG.parent / "alerts_test.yml"
PROMTOOL_BINARY = Path("/usr/bin/promtool")
RAY_SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"


class PrometheusError(RuntimeError):
    """Prometheus could not start, or a query failed."""


def render_config(
    triton_metrics_address: str, ray_targets_file: Path, scrape_interval_s: float, template: Path = PROMETHEUS_CONFIG
) -> dict:
    """The scrape config of ``template`` aimed at one stack: Triton's ``host:port`` and Ray's targets file.

    Its rule files (the alerts) are named by their absolute paths: the rendered copy lives elsewhere.
    """
    config = yaml.safe_load(template.read_text())
    config["rule_files"] = [str((template.parent / name).resolve()) for name in config.get("rule_files", [])]
    interval = f"{max(1, round(scrape_interval_s))}s"
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    for job in config["scrape_configs"]:
        if job["job_name"] == "triton":
            job["static_configs"] = [{"targets": [triton_metrics_address]}]
        elif job["job_name"] == "ray":
            job["file_sd_configs"] = [{"files": [str(ray_targets_file)]}]
    return config


def ray_targets_file(session_dir: Path, dashboard: bool, out_dir: Path) -> Path:
    """Where Prometheus finds Ray's metrics-export ports.

    Ray's dashboard keeps ``<session>/prom_metrics_service_discovery.json`` current; without the dashboard nothing
    writes it, so the ports of the nodes alive now are written to ``out_dir/ray_targets.json`` instead.
    """
    if dashboard:
        return session_dir / RAY_SERVICE_DISCOVERY_FILE
    import ray

    targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n.get("Alive")]
    path = out_dir / "ray_targets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    return path


class PrometheusServer:
    """One ``prometheus`` process on loopback with its own config and storage under ``work_dir``."""

    def __init__(self, config: dict, work_dir: Path, host: str = "127.0.0.1", port: int = 9090) -> None:
        self.config, self.work_dir, self.host, self.port = config, work_dir, host, port
        self.managed = ManagedProcess("prometheus", self.command, work_dir / "prometheus.log", self.ready)

    @property
    def url(self) -> str:
        """Base URL of Prometheus' web UI and HTTP API."""
        return f"http://{self.host}:{self.port}"

    @property
    def process(self):
        """The running ``subprocess.Popen`` (None before the first start)."""
        return self.managed.process

    def command(self, binary: Path = PROMETHEUS_BINARY) -> list[str]:
        """The prometheus command line (the config is written beside its storage)."""
        return [
            str(binary),
            f"--config.file={self.work_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.work_dir / 'data'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address={self.host}:{self.port}",
        ]

    def ready(self) -> bool:
        """Whether ``/-/ready`` answers 200."""
        return _client().get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def start(self, binary: Path = PROMETHEUS_BINARY, timeout_s: float = 60.0) -> PrometheusServer:
        """Write the config, start Prometheus and wait until it is ready."""
        if not binary.exists():
            raise PrometheusError(f"{binary} is not installed (Debian: apt-get install prometheus)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "prometheus.yml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        try:
            self.managed.start(timeout_s)
        except ProcessStartError as error:
            raise PrometheusError(str(error)) from error
        return self

    def stop(self, grace_s: float = 15.0) -> None:
        """Terminate Prometheus (killed if it does not exit within ``grace_s``)."""
        self.managed.stop(grace_s)


def query(prometheus_url: str, expr: str, timeout_s: float = 10.0) -> list[dict]:
    """The result vector of an instant PromQL query (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
    return _api(prometheus_url, "query", {"query": expr}, timeout_s)


def query_range(prometheus_url: str, expr: str, start: float, end: float, step_s: float) -> list[dict]:
    """The result matrix of a range query (``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``)."""
    return _api(prometheus_url, "query_range", {"query": expr, "start": start, "end": end, "step": step_s}, 30.0)


def metric_names(prometheus_url: str) -> set[str]:
    """Every metric name Prometheus holds series for."""
    response = _client().get(f"{prometheus_url}/api/v1/label/__name__/values", timeout=10)
    return set(response.json()["data"])


@functools.cache
def _client() -> httpx.Client:
    """One client for every query: a client made per call builds a TLS context each time (26 ms of CPU)."""
    return httpx.Client()


def _api(prometheus_url: str, endpoint: str, params: dict, timeout_s: float) -> list[dict]:
    try:
        response = _client().get(f"{prometheus_url}/api/v1/{endpoint}", params=params, timeout=timeout_s)
    except httpx.TransportError as error:
        raise PrometheusError(f"cannot reach Prometheus at {prometheus_url}: {error}") from error
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(f"query {params['query']!r} failed: {body.get('error') or response.text[:300]}")
    return body["data"]["result"]
