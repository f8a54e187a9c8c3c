"""The tritonserver binary shipped in the nvidia-pytriton wheel, as a supervised process.

Triton runs with explicit model control, so one broken model (a python-backend stub that died or stopped answering)
is unloaded and loaded again without restarting the server; :meth:`TritonServer.check` is the supervisor's health
check (stub processes alive, every model ready, a small canary inference per model at an interval).

Model control answers only requests that carry the server's own key (:mod:`serve.triton.control`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from serve.processes import ManagedProcess, ProcessStartError, free_ports
from serve.triton.activations import ActivationPool, PoolSpec, pool_of
from serve.triton.control import CONTROL_HEADER, RESTRICTED
from serve.triton.environment import backend_directory, server_binary, server_environment
from serve.triton.repository import write_python_paths
from serve.triton.residency import read_parked
from serve.triton.spec import ModelSpec, canary_body
from serve.triton.start_failure import StartLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonEndpoints:
    """Where a running Triton listens."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        """Base URL of the KServe v2 HTTP API."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the KServe v2 gRPC API."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics endpoint."""
        return f"http://{self.host}:{self.metrics_port}/metrics"


HTTP_CHECK_S = 2.0
"""Seconds between the supervisor's looks at Triton's HTTP health and model readiness."""
CANARY_TIMEOUT_S = 30.0
CANARY_SHARE = 0.01
"""The most of a model's time its canaries take: the next waits 100x the last one's (a CodeFormer's took 0.75 core)."""


class TritonServer:
    """One tritonserver over a model repository, on free loopback ports unless told otherwise.

    ``models`` are the specs of the models the stack needs: readiness waits for them, and the health check watches
    their stubs and sends each a canary inference. A callable is asked again at each look (a stack whose models
    change while it runs).
    """

    name = "tritonserver"

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        models: Iterable[ModelSpec] | Callable[[], Iterable[ModelSpec]] = (),
        host: str = "127.0.0.1",
        ports: tuple[int, int, int] = (0, 0, 0),
        canary_interval_s: float = 10.0,
        pools: Mapping[str, PoolSpec] | None = None,
        extra_args: tuple[str, ...] = (),
        parked: Path | None = None,
    ) -> None:
        self.repository = repository
        self._models = models if callable(models) else tuple(models)
        self.parked = parked  # the file naming those of ``models`` that are not loaded now (serve.triton.residency)
        spare = iter(free_ports(3, host))
        http, grpc, metrics = (port or next(spare) for port in ports)  # 0: a free port
        self.endpoints = TritonEndpoints(host, http, grpc, metrics)
        self.canary_interval_s = canary_interval_s
        self.extra_args = extra_args
        self.pool_specs = dict(pools or {})
        self.pools: dict[str, ActivationPool] = {}  # by Triton model name, once started
        self.pools_dir = log_path.parent / f"{log_path.stem}-memory"
        self.control_key = secrets.token_urlsafe(24)
        self.managed = ManagedProcess(
            self.name,
            self.command,
            log_path,
            self.ready,
            lambda: server_environment(self.pools),
            failed=lambda exited: self.start_log.failure(self.loaded(), exited),
        )
        self.start_log = StartLog(log_path)
        # No connection kept open between checks: Triton's SIGTERM waits (its exit timeout, 5 s) for open ones to close.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        self._http = httpx.Client(base_url=self.endpoints.http_url, timeout=5.0, limits=no_keepalive)
        self._last_canary = 0.0
        self._next_http_check = 0.0
        self._successes: dict[str, int] = {}
        self._canary_due: dict[str, float] = {}  # by model: when its next canary may be sent (CANARY_SHARE)
        self._stub_names: dict[psutil.Process, str] = {}  # Triton's children at the last listing: their model
        self._next_listing = 0.0  # when Triton's children are listed again even if no known stub died

    @property
    def models(self) -> dict[str, ModelSpec]:
        """The specs of the models the stack needs now, by Triton name."""
        specs = self._models() if callable(self._models) else self._models
        return {spec.name: spec for spec in specs}

    @property
    def process(self):
        """The running ``subprocess.Popen`` (None before the first start)."""
        return self.managed.process

    @property
    def pid(self) -> int | None:
        """The server's process id, if started."""
        return self.managed.pid

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.managed.running()

    def kill(self) -> None:
        """SIGKILL the server and its stubs."""
        self.managed.kill()

    def command(self) -> list[str]:
        """The tritonserver command line."""
        e = self.endpoints
        return [
            str(server_binary()),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory()}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.loaded()),  # the stack's, loaded now: not all the folder holds
            f"--http-address={e.host}",
            f"--http-port={e.http_port}",
            f"--grpc-address={e.host}",
            f"--grpc-port={e.grpc_port}",
            f"--metrics-address={e.host}",
            f"--metrics-port={e.metrics_port}",
            f"--http-restricted-api={RESTRICTED}:{CONTROL_HEADER}={self.control_key}",
            f"--grpc-restricted-protocol={RESTRICTED}:{CONTROL_HEADER}={self.control_key}",
            "--exit-on-error=false",
            "--strict-readiness=false",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        """Start Triton and wait until it and every model are ready (:meth:`spawn`, then :meth:`wait_ready`).

        The supervisor restarts it here too: a start reads only its own log lines for what failed (a model that
        failed to load in an earlier life, read again, had every later restart killed at once).
        """
        return self.spawn().wait_ready(timeout_s)

    def spawn(self) -> TritonServer:
        """Create the activation pools (at the first start) and start the process, without waiting for it.

        The pools outlive restarts of the process (the entries of stubs that died are dropped at the next look).
        """
        if not self.pools:
            for name, spec in self.pool_specs.items():
                pool = ActivationPool.create(self.pools_dir / f"{name}.json", spec.capacity)
                self.pools |= dict.fromkeys(spec.engines, pool)
        write_python_paths(self.repository)
        self.start_log.begin()
        self.managed.spawn()
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> TritonServer:
        """Wait until the spawned server and every model are ready; :class:`ProcessStartError` if they are not.

        A start the python backend aborted (:data:`~serve.triton.start_failure.PYTHON_BACKEND_ABORT`, Triton's own
        intermittent fault while stubs start on a busy machine) is tried once more.
        """
        try:
            self.managed.wait_ready(timeout_s)
        except ProcessStartError:
            if not self.start_log.python_backend_aborted():
                raise
            logger.warning("tritonserver aborted in its python backend while loading its models; starting it again")
            self.start_log.begin()
            self.managed.spawn()
            self.managed.wait_ready(timeout_s)
        self._last_canary = time.monotonic()
        logger.info("tritonserver ready: HTTP %s, gRPC %s", self.endpoints.http_url, self.endpoints.grpc_url)
        return self

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM Triton and its stubs, SIGKILL what is left after ``grace_s``."""
        self.managed.stop(grace_s)

    def loaded(self) -> dict[str, ModelSpec]:
        """The stack's models that are loaded now (all but those the residency parked): the ones watched."""
        parked, _ = read_parked(self.parked)
        return {name: spec for name, spec in self.models.items() if name not in parked}

    def ready(self) -> bool:
        """Whether the server and every model it hosts for the stack answer ready."""
        return self._http.get("/v2/health/ready").status_code == 200 and not self._models_not_ready(self.loaded())

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        return self.managed.log_tail(lines)

    def reload(self, model: str) -> None:
        """Unload ``model`` (its readiness goes false, so ``/readyz`` says 503) and load it again."""
        control = {CONTROL_HEADER: self.control_key}
        self._http.post(f"/v2/repository/models/{model}/unload", headers=control, timeout=60)
        response = self._http.post(f"/v2/repository/models/{model}/load", headers=control, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"reloading {model} failed: {response.status_code} {response.text[:200]}")

    def check(self) -> str | None:
        """The supervisor's health check: None if healthy, else what was wrong (and repaired where it could be).

        Stub processes are looked at on every call (cheap); Triton's HTTP health and model readiness every
        :data:`HTTP_CHECK_S`; the canary inferences every ``canary_interval_s``.
        """
        loaded = self.loaded()  # read once per look: the model table and the parked file are files
        broken = self._models_without_stub(loaded)
        now = time.monotonic()
        if not broken and now >= self._next_http_check:
            self._next_http_check = now + HTTP_CHECK_S
            try:
                if self._http.get("/v2/health/live").status_code != 200:
                    return "not live"
                broken = self._models_not_ready(loaded)
            except httpx.TransportError as error:
                if read_parked(self.parked)[1]:  # a model is being loaded: late answers are expected meanwhile
                    return None
                return f"not answering ({type(error).__name__})"
        if not broken and now - self._last_canary >= self.canary_interval_s:
            self._last_canary = now
            broken = self._models_failing_canary(loaded)
        still_loaded = self.loaded() if broken else loaded  # parked meanwhile: by the residency, on purpose
        broken = {model: why for model, why in broken.items() if model in still_loaded}
        if not broken:
            return None
        for model, why in broken.items():
            logger.warning("Triton model %s: %s; reloading it", model, why)
            try:
                self.reload(model)
            except (httpx.TransportError, RuntimeError) as error:
                return f"{model}: {why}; reload failed: {error}"
        return "; ".join(f"{model}: {why}, reloaded" for model, why in broken.items())

    def _stubs(self, listed: bool = False) -> dict[str, list[psutil.Process]]:
        """The live python-backend stub processes of each model, by name.

        Listing Triton's children reads every process's parent, and the check runs four times a second: between
        listings (every :data:`HTTP_CHECK_S`, or ``listed``) the last one's stubs are only asked whether they run. A
        stub's command line, which names its model, is read once it names one: a child caught between Triton's fork
        and its exec still has Triton's (a model's new stub went uncounted, and the model was reloaded, under load).
        """
        if not listed and time.monotonic() < self._next_listing:
            return _by_model({child: name for child, name in self._stub_names.items() if _runs(child)})
        try:
            children = psutil.Process(self.managed.pid).children()
        except psutil.Error:
            return {}
        names = {}
        for child in children:
            try:
                if _runs(child) and (name := self._stub_names.get(child) or _stub_model(child.cmdline())):
                    names[child] = name
            except psutil.Error:
                continue
        self._stub_names = names  # the children of this listing: a process gone is forgotten
        self._next_listing = time.monotonic() + HTTP_CHECK_S
        return _by_model(names)

    def _models_without_stub(self, loaded: dict[str, ModelSpec]) -> dict[str, str]:
        """Python-backend models of ``loaded`` with fewer live stub processes than instances, while Triton runs.

        One short of stubs is looked at again in a new listing (a model loaded since has new ones). Triton is asked
        again after its children were listed: one that died meanwhile has none (its stubs went to init), and reloading
        its models through it waited for an answer (a soak saw the unload time out after 60 s) before the supervisor
        noticed the death and restarted it.
        """
        if not self.managed.running():
            return {}
        for listed in (False, True):
            stubs = self._stubs(listed)
            missing = {
                name: "stub process died"
                for name, spec in loaded.items()
                if not spec.ensemble and len(stubs.get(name, ())) < spec.instance_count
            }
            if not missing:
                break
        return missing if self.managed.running() else {}

    def _models_not_ready(self, loaded: dict[str, ModelSpec]) -> dict[str, str]:
        """Models of ``loaded`` that Triton's repository index (one request for all) does not list as ready."""
        index = self._http.post("/v2/repository/index", json={}, headers={CONTROL_HEADER: self.control_key})
        ready = {model["name"] for model in index.json() if model.get("state") == "READY"} if index.is_success else ()
        return {name: "not ready" for name in loaded if name not in ready}

    def _models_failing_canary(self, loaded: dict[str, ModelSpec]) -> dict[str, str]:
        """Models of ``loaded`` whose smallest possible inference fails (a stub that is alive but broken).

        A canary that times out behind a long batch is not a failure: only one whose stubs used no CPU meanwhile
        and are not waiting for activation memory (stopped or deadlocked) is. A decoupled model (the loop inside
        Triton) gets none: HTTP cannot call it, and its canary would be a whole generation; its stubs and readiness
        are watched.
        """
        failing = {}
        for name, spec in loaded.items():
            if spec.ensemble or spec.decoupled or time.monotonic() < self._canary_due.get(name, 0.0):
                continue
            if self._answered_since_last_look(name):
                continue
            body, sent = canary_body(spec), time.monotonic()
            busy_before = _cpu_seconds(self._stubs().get(name, []))
            try:
                response = self._http.post(f"/v2/models/{name}/infer", json=body, timeout=CANARY_TIMEOUT_S)
                answered = time.monotonic()
                self._canary_due[name] = answered + (answered - sent) / CANARY_SHARE
            except httpx.TimeoutException:
                idle = _cpu_seconds(self._stubs().get(name, [])) - busy_before < 0.5
                pool = pool_of(self.pools, name)
                if idle and not (pool is not None and pool.waiting(name)):
                    failing[name] = f"canary inference got no answer in {CANARY_TIMEOUT_S:.0f} s and its stub is idle"
                continue
            except httpx.TransportError as error:
                failing[name] = f"canary inference failed ({type(error).__name__})"
                continue
            if response.status_code != 200:
                failing[name] = f"canary inference failed: {response.text[:200]}"
        return failing

    def _answered_since_last_look(self, name: str) -> bool:
        """Whether ``name`` answered a request successfully since this was last asked (its own proof of health)."""
        try:
            stats = self._http.get(f"/v2/models/{name}/stats").json()["model_stats"][0]
            count = int(stats["inference_stats"]["success"]["count"])
        except (httpx.TransportError, ValueError, KeyError, IndexError):
            return False
        answered = count > self._successes.get(name, count)
        self._successes[name] = count if answered else count + 1  # a canary about to be sent counts too
        return answered


def _stub_model(cmdline: list[str]) -> str | None:
    """The model a python-backend stub serves, from its command line (``.../<model>/1/model.py``); None: not a stub."""
    script = next((arg for arg in cmdline if arg.endswith("/model.py")), None)
    return script.rsplit("/", 3)[-3] if script and script.count("/") >= 3 else None


def _runs(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie, dead but not yet reaped by Triton, does not)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _by_model(names: dict[psutil.Process, str]) -> dict[str, list[psutil.Process]]:
    return {model: [process for process, name in names.items() if name == model] for model in set(names.values())}


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total
