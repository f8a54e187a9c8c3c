"""The whole stack on one machine: engines built, Triton started and supervised, Ray Serve running the Easel app.

Every process the stack starts carries ``EASEL_STACK=<id>`` in its environment, so stopping a stack (``Stack.stop``
in-process, ``stop_recorded`` from ``easel down``) finds and stops all of them, orphans included, whether the stack
is alive or its process was killed. The run state (``state.json``) lives in :mod:`serve.processes.run_state`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import psutil

from serve.models.served import ServedModels
from serve.models.table import MODEL_TABLE
from serve.observability.prometheus import PrometheusError, PrometheusServer, ray_targets_file, render_config
from serve.paths import run_dir
from serve.processes import STACK_ENV, Supervisor, free_port, free_ports
from serve.processes.gcs import KeptGcs, keep
from serve.processes.run_state import (
    BUILDING,
    DEPLOYING,
    READY,
    STARTING_RAY,
    STARTING_TRITON,
    StackInfo,
    new_stack_id,
    read_state,
    state_path,
    write_state,
)
from serve.processes.signals import children_paused, stop_stack_processes
from serve.processes.tls import client_verify
from serve.service_engines import ServiceEngines
from serve.settings import StackOptions
from serve.stack.build_plan import Built, StartPlan
from serve.stack.config import MODEL_DEPLOYMENTS, app_settings, largest_admitted_side, load_serve_config, triton_models
from serve.stack.detached import FIRST_REQUEST, FirstRequest, StillStarting, send_first_requests, start_detached
from serve.stack.ray_serve import RAY_ENV, deploy, is_loopback, sigterm_kept, start_ray, wait_until_ready
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.control import CONTROL_KEY_ENV
from serve.triton.node import THIS_NODE
from serve.triton.server import TritonServer

__all__ = [  # the launcher's one door: what the CLI, the tests and the tooling take from serve.stack
    "FIRST_REQUEST",
    "MODEL_DEPLOYMENTS",
    "RAY_ENV",
    "FirstRequest",
    "OpenToTheNetwork",
    "Stack",
    "StackOptions",
    "StartPlan",
    "StillStarting",
    "app_settings",
    "check_exposure",
    "largest_admitted_side",
    "load_serve_config",
    "scratch_stack",
    "send_first_requests",
    "start_detached",
    "triton_models",
    "wait_until_ready",
]

logger = logging.getLogger(__name__)


class OpenToTheNetwork(ValueError):
    """``easel up`` asked to serve off loopback with no API key and without ``--insecure``."""


def check_exposure(options: StackOptions) -> None:
    """Refuse to serve on a non-loopback address with no API key unless ``options.insecure``."""
    from serve.access import open_key_store

    if options.insecure or is_loopback(options.host) or open_key_store(options.store).active() > 0:
        return
    raise OpenToTheNetwork(
        f"--host {options.host} is reachable from other machines and there is no API key: "
        "create one with `easel keys create` (or pass --insecure to serve it open)"
    )


class Stack:
    """Start, supervise and stop Triton plus Ray Serve in this process (``easel up`` and the integration tests)."""

    def __init__(self, options: StackOptions, stack_id: str | None = None) -> None:
        self.options = options
        self.stack_id = stack_id or new_stack_id()
        me = psutil.Process()
        self.info = StackInfo(me.pid, me.create_time(), self.stack_id, phase=BUILDING)
        self.recorded = False  # whether each phase is written to state.json (`easel up`: :meth:`record`)
        self.supervisor = Supervisor()
        self.triton: TritonServer | None = None  # this machine's Triton (None on a cluster: see node_tritons)
        self.node_tritons = None  # serve.triton.node.NodeTritons on a cluster
        self.prometheus: PrometheusServer | None = None
        self.gcs: KeptGcs | None = None  # the Ray head's GCS, restarted when it dies (serve.processes.gcs)
        self.ray_session_dir: Path | None = None
        self.memory_budget_bytes: int | None = None  # the default model's, resolved at start
        self.engines: EngineFolder | None = None  # the default model's engines, once built
        self.models: ServedModels | None = None  # every served model, once built
        self.service_engines: ServiceEngines | None = None  # finishing, moderation and scoring's folders, once built

    def start(self, timeout_s: float = 300.0) -> StackInfo:
        """Build what is missing, start Triton and Ray Serve, and wait until ``/readyz`` answers 200."""
        opts = self.options
        check_exposure(opts)
        os.environ[STACK_ENV] = self.stack_id  # inherited by every process started from here on
        self._enter(BUILDING)
        built = StartPlan(opts).build()
        self.engines, self.models = built.engines, built.served
        self.service_engines = built.service_engines
        self.memory_budget_bytes = built.memory_budget_bytes
        if opts.address is None:
            self._spawn_triton(built)
        spare = iter(free_ports(4, opts.host))  # together, so no two can be the same port (the GCS's among them)
        port, grpc_port = opts.port or next(spare), opts.grpc_port or next(spare)
        self._enter(STARTING_RAY)
        with sigterm_kept():  # ray.init installs its own handler
            dashboard_url = self._start_ray(opts.dashboard_port or next(spare), next(spare))
        if self.triton is not None:  # loading its models while Ray started
            self.triton.wait_ready()
            self.supervisor.watch(self.triton, self.triton.check)
        if opts.address is not None:  # a Triton per model node, once Ray is reachable
            from serve.triton.node import NodeTritons

            self.node_tritons = NodeTritons(
                self.stack_id, opts.repository, opts.run_dir, built.triton_models, built.pools
            ).start()
        # Where clients (load tests, Prometheus) reach Triton: this machine's, or the first model node's.
        triton = self.triton.endpoints if self.triton else next(iter(self.node_tritons.endpoints().values()))
        config = self._serve_config(built, port, grpc_port, triton)
        self._enter(DEPLOYING)
        deploy(config, timeout_s)
        self.info = replace(
            self.info,
            api_url=f"{opts.api_scheme}://{opts.host}:{port}",
            grpc_address=f"{opts.host}:{grpc_port}",
            triton_http_url=triton.http_url,
            triton_grpc_url=triton.grpc_url,
            triton_metrics_url=triton.metrics_url,
            dashboard_url=dashboard_url,
            engine_dir=str(self.engines.path),
            store_url=opts.store,
            tls_cert=str(opts.tls_cert.resolve()) if opts.tls_cert else None,
        )
        if opts.prometheus:
            self._start_prometheus()
        wait_until_ready(self.info.api_url, timeout_s, client_verify(self.info.tls_cert))
        self._enter(READY)
        return self.info

    def _spawn_triton(self, built: Built) -> None:
        """Start this machine's Triton on what ``built`` installed; its control key to Ray's workers.

        The stack's start waits for it once Ray is up (Triton loads its models meanwhile).
        """
        opts = self.options
        self._enter(STARTING_TRITON)
        self.triton = TritonServer(
            opts.repository,
            opts.run_dir / "triton.log",
            lambda: built.triton_models_of(self._served_now()),
            ports=opts.triton_ports,
            canary_interval_s=opts.canary_interval_s,
            pools=built.pools,
            parked=built.parked,
        ).spawn()
        os.environ[CONTROL_KEY_ENV] = self.triton.control_key  # for the model residency, in Ray's workers

    def _serve_config(self, built: Built, port: int, grpc_port: int, triton):
        """The Serve config of this start: its ports, and the app told where Triton and every built file are."""
        opts = self.options
        return load_serve_config(
            opts.serve_config,
            opts.host,
            port,
            grpc_port,
            on_cluster=opts.address is not None,
            https=opts.http_options(),
            models=built.engine_dirs,
            triton_grpc_url=THIS_NODE if opts.address else triton.grpc_url,
            triton_http_url=None if opts.address else triton.http_url,
            parked_path=str(built.parked) if built.parked else None,
            model_table_path=str(built.table) if built.table else None,
            vectorize_table_path=str(built.vectorize_table) if built.vectorize_table else None,
            repository=str(opts.repository.resolve()),
            loras_dir=built.loras_dirs,
            service_engines=built.service_engines.model_dump(),  # the Serve config holds JSON
            **app_settings(opts, self.memory_budget_bytes, port),
        )

    def __enter__(self) -> Stack:
        """Start (stopping whatever started if the start fails); the block's end stops the stack."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _served_now(self) -> ServedModels:
        """The models served now: the table as ``easel models`` last changed it."""
        self.models = self.models.refreshed()
        return self.models

    def _start_prometheus(self) -> None:
        """Start Prometheus on Triton's and Ray's metrics; a failure is logged, the stack serves on without it."""
        opts = self.options
        work_dir = opts.run_dir / "prometheus"
        metrics_address = urlparse(self.info.triton_metrics_url).netloc
        config = render_config(
            metrics_address, ray_targets_file(self.ray_session_dir, opts.dashboard, work_dir), opts.scrape_interval_s
        )
        server = PrometheusServer(config, work_dir, "127.0.0.1", opts.prometheus_port or free_port())
        try:
            self.prometheus = server.start()
        except PrometheusError as error:
            logger.error("Prometheus not started: %s", error)
            return
        self.supervisor.watch(server.managed)
        self.info = replace(self.info, prometheus_url=server.url)

    def _start_ray(self, dashboard_port: int, gcs_port: int) -> str | None:
        """Start (or join) Ray, keep its head's GCS (on ``gcs_port`` where it starts one); the dashboard's URL."""
        context, dashboard_url = start_ray(self.options, self.stack_id, dashboard_port, gcs_port)
        self.ray_session_dir = Path(context.address_info["session_dir"])
        self._keep_gcs(context.address_info["gcs_address"], owned=self.options.address is None)
        return dashboard_url

    def _keep_gcs(self, address: str, owned: bool) -> None:
        """Supervise the head's GCS if it runs here with its state outside itself (:mod:`serve.processes.gcs`)."""
        self.gcs = keep(address, self.options.run_dir / "gcs_server.log", owned)
        if self.gcs is not None:
            self.supervisor.watch(self.gcs, start_timeout_s=60.0)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop (SIGSTOP) every process of the stack, supervision included, until the block ends (benchmarks)."""
        with self.supervisor.paused(), children_paused():
            yield

    def stop(self) -> None:
        """Stop supervising, tear down Ray Serve, Ray, Triton and Prometheus, and stop anything of the stack left.

        A stack stopped before it was ready skips Serve's orderly shutdown (nothing is served yet to drain; the
        controller may still be deploying): its processes are stopped, which ``easel down`` waits 5 s for.
        """
        ray = sys.modules.get("ray")  # not imported yet (stopped while building): no Ray to stop, no import to wait for
        orderly = self.info.phase == READY and (self.gcs is None or not self.gcs.owned or not self.gcs.restarted)

        self.supervisor.stopping.set()
        try:
            if self.node_tritons is not None:
                self.node_tritons.stop()
            if ray is not None and ray.is_initialized():
                from ray import serve

                try:
                    if orderly:  # after its GCS restarted, the controller's shutdown waits out its 30 s
                        serve.shutdown()
                finally:
                    ray.shutdown()
                    self._forget_gcs_state()
        finally:
            self.supervisor.stop()
            left = stop_stack_processes(self.stack_id)
            logger.info("stack stopped%s", f" ({left} leftover process(es) stopped)" if left else "")

    def _forget_gcs_state(self) -> None:
        """Delete the GCS's state the stack's own Ray kept in Redis (RocksDB's folder goes with the next start)."""
        if self.gcs is None or not self.gcs.owned or not (self.gcs.storage or "").startswith("redis"):
            return
        from ray._private.gcs_utils import cleanup_redis_storage

        url = urlparse(self.options.store)
        try:
            cleanup_redis_storage(url.hostname, url.port or 6379, url.password or "", False, self.stack_id)
        except Exception as error:  # noqa: BLE001 - a store that went away keeps a dead stack's keys, no more
            logger.warning("the GCS's state in %s not deleted: %s", self.options.store, error)

    def record(self) -> Path:
        """Record the stack in ``state.json`` now and at each phase of its start (``easel up``).

        From this moment ``easel down`` finds it, and a second ``easel up`` sees it, whatever it is doing.
        """
        self.recorded = True
        return self.write_state()

    def _enter(self, phase: str) -> None:
        self.info = replace(self.info, phase=phase)
        logger.info("stack %s: %s", self.stack_id, phase)
        if self.recorded:
            self.write_state()

    def write_state(self) -> Path:
        """Record where the stack runs, for ``easel down`` and ``easel loadtest``."""
        return write_state(self.info, self.options.run_dir)

    def forget_state(self) -> None:
        """Remove ``state.json`` if it records this stack."""
        recorded = read_state(self.options.run_dir)
        if recorded is not None and recorded.stack_id == self.stack_id:
            state_path(self.options.run_dir).unlink(missing_ok=True)


@contextmanager
def scratch_stack(model_dir: Path | None = None, folder: Path | None = None, **options) -> Iterator[Stack]:
    """A stack on free ports (no dashboard) over a scratch model repository, for benchmarks, load tests and chaos.

    Benchmarking another model leaves the checkout's repository alone. Its job store, model table and Prometheus start
    empty (nothing an earlier scratch stack changed is resumed) and it has no result cache (a benchmark that repeats
    a seeded request must time the generation, not a cache hit).
    ``options``: more :class:`StackOptions`.
    """
    folder = folder or run_dir() / "bench"
    for stale in [*folder.glob("easel.db*"), folder / MODEL_TABLE]:  # a scratch stack starts from nothing
        stale.unlink(missing_ok=True)
    shutil.rmtree(folder / "prometheus", ignore_errors=True)  # an earlier run's series would blend into this one's
    options = StackOptions(
        **{
            "port": 0,
            "dashboard": False,
            "models": {"model": model_dir} if model_dir is not None else {},
            "repository": folder / "model_repository",
            "run_dir": folder,
            "cache_bytes": 0,
            **options,
        }
    )
    with Stack(options) as stack:
        yield stack
