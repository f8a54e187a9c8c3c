"""The Ray head's GCS kept: its state outside the process, and the process restarted where it ran.

Ray's GCS fault tolerance, as KubeRay sets it up for a RayService: with the GCS's tables in external storage (Redis,
or RocksDB on the head's disk), a GCS that starts again on the same port finds the cluster as it left it. Meanwhile
raylets, workers and the Serve application carry on (actor calls, so Serve's proxies and replicas, do not go through
the GCS) and reconnect within ``gcs_rpc_server_reconnect_timeout_s`` (60 s; past it Ray's processes exit). Ray does
not restart a GCS itself (KubeRay restarts the head pod): :class:`KeptGcs` does, on this machine, with the command line
and environment the dead one had.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlparse

import psutil

from serve.processes.managed import ManagedProcess

logger = logging.getLogger(__name__)

PORT_FLAG = "--gcs_server_port="
REDIS_ADDRESS = "RAY_REDIS_ADDRESS"
NAMESPACE = "RAY_external_storage_namespace"
STORAGE = "RAY_gcs_storage"
STORAGE_PATH = "RAY_gcs_storage_path"
PORT = "RAY_GCS_SERVER_PORT"


def storage_env(store_url: str, run_dir: Path, namespace: str, port: int) -> dict[str, str]:
    """The environment a head Ray that the stack starts needs for its GCS state to outlive the GCS process.

    In the store's Redis (under ``namespace``) when the store is Redis, else RocksDB in ``run_dir/gcs``; the GCS on a
    fixed ``port``, so one started again is found where the old one was.
    """
    if urlparse(store_url).scheme == "redis":
        url = urlparse(store_url)
        return {REDIS_ADDRESS: f"{url.hostname}:{url.port or 6379}", NAMESPACE: namespace, PORT: str(port)}
    return {STORAGE: "rocksdb", STORAGE_PATH: str(run_dir / "gcs"), PORT: str(port)}


def external_storage(env: dict[str, str]) -> str | None:
    """Where a GCS started with ``env`` keeps its state, if outside its memory: ``redis HOST:PORT`` or ``rocksdb``."""
    if env.get(REDIS_ADDRESS):
        return f"redis {env[REDIS_ADDRESS]}"
    if env.get(STORAGE) == "rocksdb":
        return f"rocksdb {env.get(STORAGE_PATH)}"
    return None


def find_gcs(address: str) -> psutil.Process | None:
    """The ``gcs_server`` process on this machine serving ``address`` (HOST:PORT), if it runs here."""
    port = int(address.rsplit(":", 1)[1])
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "gcs_server":
            continue
        with suppress(psutil.Error):
            if port in _listening(process):
                return process
    return None


def _listening(process: psutil.Process) -> set[int]:
    return {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}


class KeptGcs(ManagedProcess):
    """A running GCS (started by Ray), restarted with its own command line and environment when it dies.

    ``owned``: the stack started that Ray, and stopping the stack stops this GCS; a cluster's GCS (``easel up
    --address`` on the head's machine) is restarted, never stopped.
    """

    def __init__(self, process: psutil.Process, address: str, log_path: Path, owned: bool) -> None:
        host, port = address.rsplit(":", 1)
        command = [f"{PORT_FLAG}{port}" if part.startswith(PORT_FLAG) else part for part in process.cmdline()]
        environment = process.environ()
        super().__init__(
            "gcs_server",
            lambda: command,
            log_path,
            probe=lambda: _accepts(host, int(port)),
            env=lambda: environment,
            die_with_parent=owned,
        )
        self.adopted, self.address, self.owned = process, address, owned
        self.storage = external_storage(environment)

    @property
    def restarted(self) -> bool:
        """Whether the GCS Ray started died and this one is a restart."""
        return self.process is not None

    @property
    def pid(self) -> int | None:
        """The GCS's process id: the one Ray started, or the latest restart."""
        return self.adopted.pid if self.process is None else self.process.pid

    def running(self) -> bool:
        """Whether the GCS lives (the one Ray started is reaped here if it was this process's child)."""
        if self.process is not None:
            return super().running()
        with suppress(ChildProcessError, OSError):
            os.waitpid(self.adopted.pid, os.WNOHANG)
        try:
            return self.adopted.is_running() and self.adopted.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def kill(self) -> None:
        """SIGKILL the GCS (Ray's, or the restarted one's process group)."""
        if self.process is not None:
            super().kill()
            return
        with suppress(ProcessLookupError):
            os.kill(self.adopted.pid, signal.SIGKILL)

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the GCS if the stack owns it; a cluster's is left running."""
        if not self.owned:
            return
        if self.process is not None:
            super().stop(grace_s)
        elif self.running():  # Ray stops the GCS it started; one still alive is killed
            self.kill()


def _accepts(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1):
        return True


def keep(address: str, log_path: Path, owned: bool) -> KeptGcs | None:
    """The GCS at ``address`` kept, if it runs on this machine and keeps its state outside itself; else None (logged).

    A GCS with its state in memory is not restarted: a new one would know nothing of the cluster.
    """
    process = find_gcs(address)
    if process is None:
        logger.warning("the GCS at %s does not run on this machine: its restart is left to whatever runs it", address)
        return None
    kept = KeptGcs(process, address, log_path, owned)
    if kept.storage is None:
        logger.warning(
            "the GCS at %s keeps the cluster's state in memory: if it dies, Ray's processes exit after 60 s (start "
            "the head with %s=HOST:PORT, or %s=rocksdb and %s=DIR, to have it restarted)",
            address,
            REDIS_ADDRESS,
            STORAGE,
            STORAGE_PATH,
        )
        return None
    logger.info("GCS pid %d at %s kept (state in %s)", process.pid, address, kept.storage)
    return kept
