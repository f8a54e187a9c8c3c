"""``easel status``: what the running stack serves, where it listens, its keys and jobs, read from the stack itself.

The run state (``state.json``) says where the stack listens and where its store is; the models come from its API
(``GET /v1/models``: version, adapters, loaded), the keys and the jobs from its store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serve.access import open_key_store
from serve.access.keys import API_KEY_ENV, client_headers
from serve.jobs import open_job_store
from serve.jobs.model import JobStatus
from serve.paths import run_dir
from serve.processes.run_state import READY, StackInfo, running_stack
from serve.processes.tls import client_verify
from serve.stores import default_url

logger = logging.getLogger(__name__)

NOT_RUNNING, STARTING = 3, 4
"""``easel status``'s exit codes when no stack runs, and while one starts (0: it is up); LSB's ``status`` uses 3."""
ENDPOINTS = (
    ("API", "api_url"),
    ("gRPC API", "grpc_address"),
    ("Triton HTTP", "triton_http_url"),
    ("Triton gRPC", "triton_grpc_url"),
    ("Triton metrics", "triton_metrics_url"),
    ("Ray dashboard", "dashboard_url"),
    ("Prometheus", "prometheus_url"),
    ("TLS certificate", "tls_cert"),
)
"""Each endpoint a stack records, as ``easel up`` prints it."""


@dataclass(frozen=True)
class StackStatus:
    """What ``easel status`` shows of one recorded, live stack."""

    info: StackInfo
    folder: Path
    models: list[dict] = field(default_factory=list)  # GET /v1/models' entries, the default first
    models_unknown: str | None = None  # why the models could not be listed
    keys: int | None = None  # active API keys (None: the store could not be read)
    jobs: dict[str, int] = field(default_factory=dict)  # queued, running

    @property
    def uptime_s(self) -> float:
        """Seconds since ``easel up`` started."""
        return time.time() - self.info.started_at

    def lines(self) -> list[str]:
        """The status as ``easel status`` prints it."""
        info = self.info
        state = "up" if info.phase == READY else f"starting ({info.phase})"
        said = [f"Easel is {state}: pid {info.pid}, uptime {_duration(self.uptime_s)}"]
        said.append(f"  {'run folder':<15} {self.folder}")
        said += [f"  {name:<15} {getattr(info, key)}" for name, key in ENDPOINTS if getattr(info, key)]
        if info.phase != READY:
            return said
        said.append("models (the default first):")
        said += [f"  {_model_line(model)}" for model in self.models] or [f"  unknown: {self.models_unknown}"]
        keys = "unknown (its store could not be read)" if self.keys is None else str(self.keys)
        said.append(f"API keys: {keys}{' (the API is open)' if self.keys == 0 else ''}")
        said.append(f"jobs: {self.jobs.get('queued', 0)} queued, {self.jobs.get('running', 0)} running")
        return said


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _ip_adapter(name: str, kind: str | None) -> str:
    """An IP-Adapter as ``easel status`` names it: a FaceID's or InstantID's kind beside its name."""
    return f"IP-Adapter {name}" + (f" ({kind})" if kind and kind != "image" else "")


def _model_line(model: dict) -> str:
    """One model: name, version, family, size, loaded or not, adapters; its circuit unless closed; its chain if any."""
    adapters = [
        *(["LoRAs"] if model.get("loras") else []),
        *(_ip_adapter(name, model.get("ip_adapter_kinds", {}).get(name)) for name in model.get("ip_adapters", [])),
        *(f"ControlNet {name}" for name in model.get("controlnets", [])),
    ]
    loaded = "loaded" if model.get("loaded") else "not loaded (loads on its first request)"
    circuit, chain = model.get("circuit", "closed"), ", ".join(model.get("fallback", []))
    return (
        f"{model['id']}: version {model['version']}, {model['family']} {model['native_size']}, {loaded}; "
        f"adapters: {', '.join(adapters) or 'none'}{'' if circuit == 'closed' else f'; circuit {circuit}'}"
        f"{f'; fallback {chain}' if chain else ''}"
    )


def stack_status(folder: Path | None = None) -> StackStatus | None:
    """The status of the stack recorded in ``folder`` (default: ``$EASEL_HOME/run``); None when none runs."""
    folder = folder or run_dir()
    info = running_stack(folder)
    if info is None:
        return None
    if info.phase != READY:
        return StackStatus(info, folder)
    models, why = [], None
    try:
        response = httpx.get(
            f"{info.api_url}/v1/models", headers=client_headers(), timeout=10, verify=client_verify(info.tls_cert)
        )
        if response.status_code in (401, 403):
            why = f"API keys are on: set {API_KEY_ENV} to a key to list them"
        else:
            response.raise_for_status()
            models = response.json()["data"]
    except httpx.HTTPError as error:
        why = f"{info.api_url} did not answer: {error}"
    store = info.store_url or default_url(folder)
    return StackStatus(info, folder, models, why, _keys(store), _jobs(store))


def _keys(store: str) -> int | None:
    try:
        return open_key_store(store).active()
    except Exception as error:  # noqa: BLE001 - a store that cannot be read is said, not fatal to a status
        logger.warning("API keys not counted: %s", error)
        return None


def _jobs(store: str) -> dict[str, int]:
    try:
        jobs = open_job_store(store)
    except Exception as error:  # noqa: BLE001 - as for the keys
        logger.warning("jobs not counted: %s", error)
        return {}
    try:
        counts = jobs.counts()
    finally:
        jobs.close()
    return {status.value: sum(n for (s, _), n in counts.items() if s == status) for status in JobStatus}
