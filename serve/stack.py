"""The whole stack on one machine: engines built, Triton started and supervised, Ray Serve running the Easel app.

Every process the stack starts carries ``EASEL_STACK=<id>`` in its environment, so stopping a stack (``Stack.stop``
in-process, ``stop_recorded`` from ``easel down``) finds and stops all of them, orphans included, whether the stack
is alive or its process was killed. The run state (``state.json``) lives in :mod:`serve.processes.run_state`.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
import yaml

from serve.adapters.support import LORA_ENGINE_CLASS
from serve.errors import InvalidInput
from serve.finishing.upscalers import Upscalers
from serve.observability.prometheus import PrometheusError, PrometheusServer, ray_targets_file, render_config
from serve.paths import run_dir
from serve.processes import STACK_ENV, Supervisor, free_port, free_ports
from serve.processes.gcs import KeptGcs, keep, storage_env
from serve.processes.loopback import API_HOST_ENV
from serve.processes.run_state import (
    BUILDING,
    DEPLOYING,
    READY,
    STARTING,
    STARTING_RAY,
    STARTING_TRITON,
    StackInfo,
    environ,
    new_stack_id,
    read_state,
    state_path,
    write_state,
)
from serve.processes.signals import children_paused, stop_stack_processes
from serve.settings import AppSettings, StackOptions
from serve.text_to_image.admission import Admission, Limits, Work
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.models import MODEL_TABLE, ModelTable, ServedModels
from serve.text_to_image.schema import MAX_IMAGES, MAX_SIDE, MIN_SIDE
from serve.triton.node import NODE_RESOURCE, NODE_RESOURCE_PER_REPLICA, THIS_NODE
from serve.triton.residency import IN_FLIGHT_FILE, Residency, write_parked
from serve.triton.server import CONTROL_KEY_ENV, TritonServer
from serve.vectorize.versions import VECTORIZE_TABLE, VectorizeTable, uninstall_stale_versions, version_specs

logger = logging.getLogger(__name__)

PARKED_FILE = "parked-models.json"

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
# it write within the command line only. A value already in the environment wins.
RAY_ENV = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.wire:proxy_middlewares",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_max_direct_call_object_size": str(16 << 20),
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "SPT_NOENV": "1",
}
SINGLE_MACHINE_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",)
"""Left out when deploying onto a cluster off loopback (`address`): its nodes have addresses of their own. A cluster
on loopback (nodes started with 127.0.0.1) needs it: without it Ray rewrites 127.0.0.1 to the machine's address."""
WORKER_SETUP_HOOK = "serve.processes.ray_worker.setup"

FIRST_REQUEST = {
    "prompt": "a red heart icon",
    "size": "64x64",
    "num_inference_steps": 20,
    "seed": 0,
    "scheduler": "ddim",
}


class OpenToTheNetwork(ValueError):
    """``easel up`` asked to serve off loopback with no API key and without ``--insecure``."""


def check_exposure(options: StackOptions) -> None:
    """Refuse to serve on a non-loopback address with no API key unless ``options.insecure``."""
    from serve.access import open_key_store

    if options.insecure or _is_loopback(options.host) or open_key_store(options.store).active() > 0:
        return
    raise OpenToTheNetwork(
        f"--host {options.host} is reachable from other machines and there is no API key: "
        "create one with `easel keys create` (or pass --insecure to serve it open)"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MODEL_DEPLOYMENTS = ("TextToImage", "Vectorizer")
"""The deployments that call Triton: on a cluster they run only on nodes with a Triton of their own."""


def load_serve_config(path: Path, host: str, port: int, grpc_port: int, on_cluster: bool = False, **args):
    """The Serve config at ``path`` with the HTTP and gRPC ports and the app's ``args`` (engine folder...) set.

    The gRPC API listens on ``host`` too (:mod:`serve.processes.loopback`). ``on_cluster``: the model deployments ask
    for a sliver of the ``triton`` resource, so they land on nodes that have a Triton.
    """
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text())
    raw.setdefault("http_options", {}).update(host=host, port=port)
    raw.setdefault("grpc_options", {}).update(port=grpc_port)
    for app in raw["applications"]:
        app.setdefault("args", {}).update(args)
        for deployment in app.get("deployments", []) if on_cluster else []:
            if deployment["name"] in MODEL_DEPLOYMENTS:
                options = deployment.setdefault("ray_actor_options", {})
                options.setdefault("resources", {})[NODE_RESOURCE] = NODE_RESOURCE_PER_REPLICA
    return ServeDeploySchema.model_validate(raw)


def app_settings(opts: StackOptions, memory_budget_bytes: int) -> dict:
    """What the Serve app is told of ``easel up``'s settings.

    Every :class:`AppSettings` field as given (a new one reaches the app with no change here), the memory budget
    and the store resolved. The room for weights stays as given: None, every model's, grows with a model added.
    """
    given = opts.model_dump(mode="json", include=set(AppSettings.model_fields))
    return given | {"memory_budget_bytes": memory_budget_bytes, "store_url": opts.store}


def triton_models(
    models: ServedModels, vectorize: bool, vectorize_table: Path | None = None, upscalers_dir: Path | None = None
) -> list:
    """The specs of every Triton model the stack serves (the ones readiness, supervision and canaries cover).

    With ``vectorize``, every vectorize version its table (``vectorize_table``) names, else version 1's.
    """
    specs = [spec for model in models.values() for spec in model.triton_specs()]
    specs += [entry.spec for entry in Upscalers.read(upscalers_dir).ready]
    if not vectorize:
        return specs
    versions = VectorizeTable.read(vectorize_table).versions if vectorize_table else {1: ""}
    return specs + [spec for version in sorted(versions) for spec in version_specs(version)]


def largest_admitted_side(engines: EngineFolder, total_bytes: int, n: int = MAX_IMAGES, steps: int = 2) -> int:
    """The largest square side (a multiple of 64, up to the API's limit) that admission lets ``n`` images have.

    Decided as the ``TextToImage`` replicas decide (:class:`Admission`), for the budget ``total_bytes``.
    """
    admission = Admission.for_engines(engines, Limits(total_bytes))
    admitted = MIN_SIDE
    for side in range(64, MAX_SIDE + 1, 64):
        try:
            admission.check(Work(n, steps, side, side))
        except InvalidInput:
            break
        admitted = side
    return admitted


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

    def start(self, timeout_s: float = 300.0) -> StackInfo:
        """Build what is missing, start Triton and Ray Serve, and wait until ``/readyz`` answers 200."""
        from build_engines.vectorize.repository import install_vectorize

        opts = self.options
        check_exposure(opts)
        os.environ[STACK_ENV] = self.stack_id  # inherited by every process started from here on
        self._enter(BUILDING)
        engine_dirs = self._build_models()
        upscalers_dir = self._build_upscalers()
        self.engines = engines = EngineFolder(next(iter(engine_dirs.values())))
        loras_dir = self._install_loras(engines)
        table = self._start_table(engine_dirs) if opts.address is None else None
        served = ServedModels.open(
            engine_dirs, None, opts.memory_budget_bytes, opts.max_cost, opts.model_weights_bytes, table
        )
        self.models = served
        self._install_kept(served, engine_dirs)
        vectorize = install_vectorize(opts.repository)
        vectorize_table = self._start_vectorize_table() if vectorize and opts.address is None else None
        self.memory_budget_bytes = served.room_bytes + served.activation_bytes
        pools = {"text_to_image": served.pool()}  # one activation pool for every model's engines
        models = triton_models(served, vectorize, vectorize_table, upscalers_dir)
        parked = self._park(served) if opts.address is None else None
        if opts.address is None:
            self._enter(STARTING_TRITON)
            self.triton = TritonServer(
                opts.repository,
                opts.run_dir / "triton.log",
                lambda: triton_models(self._served_now(), vectorize, vectorize_table, upscalers_dir),
                ports=opts.triton_ports,
                canary_interval_s=opts.canary_interval_s,
                pools=pools,
                parked=parked,
            ).start()
            self.supervisor.watch(self.triton.managed, self.triton.check)
            os.environ[CONTROL_KEY_ENV] = self.triton.control_key  # for the model residency, in Ray's workers
        spare = iter(free_ports(3, opts.host))  # together, so no two can be the same port
        port, grpc_port = opts.port or next(spare), opts.grpc_port or next(spare)
        self._enter(STARTING_RAY)
        with _sigterm_kept():  # ray.init installs its own handler
            dashboard_url = self._start_ray(opts.dashboard_port or next(spare))
        if opts.address is not None:  # a Triton per model node, once Ray is reachable
            from serve.triton.node import NodeTritons

            self.node_tritons = NodeTritons(self.stack_id, opts.repository, opts.run_dir, models, pools).start()
        # Where clients (load tests, Prometheus) reach Triton: this machine's, or the first model node's.
        triton = self.triton.endpoints if self.triton else next(iter(self.node_tritons.endpoints().values()))
        config = load_serve_config(
            opts.serve_config,
            opts.host,
            port,
            grpc_port,
            on_cluster=opts.address is not None,
            models=engine_dirs,
            triton_grpc_url=THIS_NODE if opts.address else triton.grpc_url,
            triton_http_url=None if opts.address else triton.http_url,
            parked_path=str(parked) if parked else None,
            model_table_path=str(table) if table else None,
            vectorize_table_path=str(vectorize_table) if vectorize_table else None,
            repository=str(opts.repository.resolve()),
            loras_dir=loras_dir,
            upscalers_dir=str(upscalers_dir) if upscalers_dir else None,
            **app_settings(opts, self.memory_budget_bytes),
        )
        self._enter(DEPLOYING)
        _deploy(config, timeout_s)
        self.info = replace(
            self.info,
            api_url=f"http://{opts.host}:{port}",
            grpc_address=f"{opts.host}:{grpc_port}",
            triton_http_url=triton.http_url,
            triton_grpc_url=triton.grpc_url,
            triton_metrics_url=triton.metrics_url,
            dashboard_url=dashboard_url,
            engine_dir=str(engines.path),
        )
        if opts.prometheus:
            self._start_prometheus()
        wait_until_ready(self.info.api_url, timeout_s)
        self._enter(READY)
        return self.info

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

    def _start_table(self, engine_dirs: dict[str, str]) -> Path:
        """Write the model table of this start: the last run's as the API left it, or a new one of ``engine_dirs``.

        The models the table serves that this start did not build (added, or replaced, through the API) are
        installed in the repository again.
        """
        path = self.options.run_dir / MODEL_TABLE
        path.parent.mkdir(parents=True, exist_ok=True)
        table = ModelTable.resumed(ModelTable.read(path) if path.exists() else None, engine_dirs)
        table.write(path)
        kept = [entry for entry in table.current.values() if entry.engine_dir != engine_dirs.get(entry.name)]
        if kept:
            logger.info("models kept from the last run: %s", ", ".join(entry.version_id for entry in kept))
        return path

    def _install_kept(self, served: ServedModels, engine_dirs: dict[str, str]) -> None:
        """Install the served versions this start did not build (the API's, kept from the last run)."""
        for model in served.versions():
            if str(model.folder.path) != engine_dirs.get(model.name) or model.version > 1:
                model.install(self.options.repository)

    def _start_vectorize_table(self) -> Path:
        """Write the vectorize versions of this start: version 1, the committed trained set."""
        from build_engines.vectorize.runtime import TRAINED_DIR

        path = self.options.run_dir / VECTORIZE_TABLE
        uninstall_stale_versions(self.options.repository)  # a version an earlier run left
        VectorizeTable.start(TRAINED_DIR.resolve()).write(path)
        return path

    def _served_now(self) -> ServedModels:
        """The models served now: the table as ``easel models`` last changed it."""
        self.models = self.models.refreshed()
        return self.models

    def _park(self, served: ServedModels) -> Path:
        """Decide which models Triton loads at start (the pinned, then in order while their weights fit the room).

        Writes the others' Triton models to the file the supervisor and the residency read; returns its path.
        """
        weights = {name: model.folder.weights_bytes for name, model in served.items()}
        loaded = Residency(weights, served.room_bytes, frozenset(self.options.pin)).fill(served)
        path = self.options.run_dir / PARKED_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.options.run_dir / IN_FLIGHT_FILE).unlink(missing_ok=True)  # the last run's requests ended with it
        write_parked(path, [t for name, model in served.items() if name not in loaded for t in model.triton_names()])
        logger.info("models loaded at start: %s (weights room %.2f GiB)", ", ".join(loaded), served.room_bytes / 2**30)
        return path

    def _build_models(self) -> dict[str, str]:
        """Build (or reuse) each model's engines and install them under its Triton names; name -> engine folder.

        The default model (the first) is built with the stack's adapters, ControlNets and step caching.
        """
        from build_engines.text_to_image.adapters import AdapterBuild
        from build_engines.text_to_image.build import build

        opts = self.options
        built = {}
        for index, (name, model_dir) in enumerate(opts.served.items()):
            default = index == 0
            extras = {}
            if default:
                adapters = AdapterBuild(lora=opts.loras_dir is not None, ip_adapter=opts.ip_adapter_dir)
                extras = {"adapters": adapters, "controlnets": opts.controlnets, "step_cache": opts.step_cache}
                extras["vae_decoder"] = opts.vae_decoder_dir
            logger.info("model %s: %s", name, model_dir or "embedded")
            how = {"runtime": opts.runtime, "precision": opts.precision}
            folder = build(model_dir, opts.repository, prefix=ServedModels.prefix(name, default), **how, **extras)
            built[name] = str(folder.path)
        return built

    def _build_upscalers(self) -> Path | None:
        """Build (or reuse) the ``--upscaler`` engines and install the ready ones; their folder (None: none)."""
        from build_engines.finishing.upscalers import build_upscalers

        return build_upscalers(self.options.upscalers, self.options.repository)

    def _install_loras(self, engines: EngineFolder) -> str | None:
        """Prepare the ``--loras`` folder for these engines and link its registry into their Triton models."""
        opts = self.options
        if opts.loras_dir is None:
            return None
        from build_engines.text_to_image.build import default_model_dir
        from build_engines.text_to_image.loras import build_registry, install_registry

        model_dir = opts.model_dir or default_model_dir()
        registry = build_registry(opts.loras_dir, engines, model_dir, opts.lora_resident, next(iter(opts.served)))
        folder = opts.run_dir / "loras"
        lora_ready = [name for name, spec in engines.specs.items() if spec.python_model == LORA_ENGINE_CLASS]
        install_registry(registry, folder, opts.repository, lora_ready, model_dir)
        return str(folder)

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

    def _start_ray(self, dashboard_port: int) -> str | None:
        opts = self.options
        one_machine = opts.address is None or _is_loopback(opts.address.rsplit(":", 1)[0])
        for name, value in RAY_ENV.items():
            if one_machine or name not in SINGLE_MACHINE_ENV:
                os.environ.setdefault(name, value)  # read by Ray when imported, inherited by its workers
        os.environ[API_HOST_ENV] = opts.host
        import ray

        if opts.address:  # a cluster's workers get the settings from the job (its nodes were started elsewhere)
            env = {name: os.environ[name] for name in (*RAY_ENV, API_HOST_ENV) if name in os.environ}
            context = ray.init(
                address=opts.address,
                logging_level=logging.WARNING,
                log_to_driver=False,
                runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK, "env_vars": env},
            )
            self.ray_session_dir = Path(context.address_info["session_dir"])
            self._keep_gcs(context.address_info["gcs_address"], owned=False)
            return f"http://{context.dashboard_url}" if context.dashboard_url else None
        gcs_env = storage_env(opts.store, opts.run_dir, self.stack_id, free_port())
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
        self.ray_session_dir = Path(context.address_info["session_dir"])
        self._keep_gcs(context.address_info["gcs_address"], owned=True)
        _stop_log_monitor()
        return f"http://{context.dashboard_url}" if opts.dashboard and context.dashboard_url else None

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
def _sigterm_kept() -> Iterator[None]:
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


def _deploy(config, timeout_s: float) -> None:
    """Deploy a Serve config the way ``serve run CONFIG`` does, and wait until every application runs."""
    from ray import serve
    from ray.serve._private import api as serve_api

    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        grpc_options=config.grpc_options.model_dump(),
        proxy_location=config.proxy_location,
    )
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


class StillStarting(Exception):
    """``easel up --detach`` waited its time and the stack is still starting; it goes on in the background."""


def start_detached(
    argv: list[str],
    folder: Path | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[str], None] = logger.info,
) -> StackInfo:
    """Run ``easel ARGV`` (an ``up`` command line) in a new session, logging to a file; return its state once ready.

    ``progress`` is told each phase, and while it builds each new line of the build's log. Past ``timeout_s`` it
    raises :class:`StillStarting` saying where the start goes on; a start that failed raises ``RuntimeError``.
    """
    folder = folder or run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    state_path(folder).unlink(missing_ok=True)
    log_path = folder / "easel-up.log"
    logged_from = log_path.stat().st_size if log_path.exists() else 0
    stack_id = new_stack_id()
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "serve.cli", *argv, "--no-first-request", "--stack-id", stack_id],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != STACK_ENV},  # it marks its own processes
        )
    with contextlib.suppress(psutil.NoSuchProcess):  # recorded now, so `easel down` finds it however early
        write_state(StackInfo(child.pid, psutil.Process(child.pid).create_time(), stack_id, STARTING), folder)
    progress(f"starting in the background (pid {child.pid}, log {log_path})")
    deadline, said = time.monotonic() + timeout_s, None
    while (info := read_state(folder)) is None or info.pid != child.pid or info.phase != READY:
        if child.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"`easel up` exited with {child.returncode}:\n{tail}")
        phase = info.phase if info is not None and info.pid == child.pid else STARTING
        if time.monotonic() > deadline:
            raise StillStarting(
                f"still {phase} after {timeout_s:.0f} s; it goes on in the background (pid {child.pid}): "
                f"follow {log_path}; `easel down` stops it"
            )
        now = f"{phase}: {_last_build_line(log_path, logged_from)}" if phase == BUILDING else phase
        if now != said:
            progress(now)
            said = now
        time.sleep(1)
    wait_until_ready(info.api_url, timeout_s=60)
    return info


def _last_build_line(log_path: Path, start: int) -> str:
    """The message of the last line the build logged in ``log_path`` since byte ``start`` (its progress)."""
    with log_path.open("rb") as log:
        log.seek(start)
        lines = [line for line in log.read().decode(errors="replace").splitlines() if " build_engines." in line]
    return lines[-1].split(": ", 1)[-1][:120] if lines else "starting"


@dataclass(frozen=True)
class FirstRequest:
    """The example generation ``easel up`` sends once ready."""

    body: dict
    status: int
    seconds: float
    image_path: Path | None
    error: str | None = None
    ssim: float | None = None  # svg: the SVG rendered back against the PNG it came from


def send_first_requests(api_url: str, folder: Path | None = None) -> list[FirstRequest]:
    """Send :data:`FIRST_REQUEST` as PNG, then as SVG (text -> image -> Vectorizer); save both under the run folder.

    Stops at the first answer that is not a 200. With API keys on, it sends ``$EASEL_API_KEY``.
    """
    from serve.access.keys import client_headers

    answers = []
    for output_format in ("png", "svg"):
        body = FIRST_REQUEST | {"output_format": output_format}
        started = time.perf_counter()
        response = httpx.post(f"{api_url}/v1/images/generations", json=body, headers=client_headers(), timeout=300)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            answers.append(FirstRequest(body, response.status_code, elapsed, None, response.text[:500]))
            break
        item = response.json()["data"][0]
        path = (folder or run_dir()) / f"first.{output_format}"
        path.write_bytes(base64.b64decode(item["b64_json"]))
        answers.append(FirstRequest(body, response.status_code, elapsed, path, ssim=item.get("ssim")))
    return answers


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
