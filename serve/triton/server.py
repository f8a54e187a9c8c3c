"""Run the tritonserver binary shipped in the nvidia-pytriton wheel: set-up, free ports, readiness, logs, shutdown."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from serve.paths import easel_home

logger = logging.getLogger(__name__)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now.

    All are held open until each is bound: ports asked for one at a time may come back equal, since the kernel
    can hand out a port again as soon as it is released.
    """
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    return free_ports(1, host)[0]


def _pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent


def backend_directory() -> Path:
    """A backends folder whose python backend carries the stub built for this interpreter's Python version."""
    source = _pytriton_dir() / "tritonserver" / "backends" / "python"
    target = easel_home() / "triton" / f"backends-py{sys.version_info.major}.{sys.version_info.minor}"
    python = target / "python"
    stub = (
        _pytriton_dir() / "tritonserver" / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    )
    if not (python / "triton_python_backend_stub").exists():
        python.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, python / item.name)
        shutil.copy2(stub / "triton_python_backend_stub", python / "triton_python_backend_stub")
    return target


def server_environment() -> dict[str, str]:
    """Environment for tritonserver: its bundled libraries, and this interpreter's libpython first for the stub."""
    libs = [sysconfig.get_config_var("LIBDIR"), str(_pytriton_dir().parent / "nvidia_pytriton.libs")]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


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


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready in time; the message carries the end of its log."""


class TritonServer:
    """One tritonserver process over a model repository, on free loopback ports unless told otherwise."""

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        host: str = "127.0.0.1",
        ports: tuple[int, int, int] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repository = repository
        self.log_path = log_path
        http, grpc, metrics = ports or free_ports(3, host)
        self.endpoints = TritonEndpoints(host, http, grpc, metrics)
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The tritonserver command line."""
        e = self.endpoints
        return [
            str(_pytriton_dir() / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-address={e.host}",
            f"--http-port={e.http_port}",
            f"--grpc-address={e.host}",
            f"--grpc-port={e.grpc_port}",
            f"--metrics-address={e.host}",
            f"--metrics-port={e.metrics_port}",
            "--exit-on-error=false",
            "--strict-readiness=false",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def start(self, models: tuple[str, ...] = (), timeout_s: float = 180.0, detach: bool = False) -> TritonServer:
        """Start the process and wait until it and ``models`` are ready; raise :class:`TritonStartError` if not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_environment(), start_new_session=detach
            )
        logger.info("tritonserver pid %d starting (log: %s)", self.process.pid, self.log_path)
        self.wait_ready(models, timeout_s)
        return self

    def wait_ready(self, models: tuple[str, ...], timeout_s: float) -> None:
        """Poll server and model readiness; fail fast if the process dies."""
        deadline = time.monotonic() + timeout_s
        pending = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in models)]
        with httpx.Client(base_url=self.endpoints.http_url, timeout=2.0) as client:
            while pending:
                if self.process is not None and self.process.poll() is not None:
                    raise TritonStartError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TritonStartError(f"not ready after {timeout_s:.0f} s ({pending[0]}):\n{self.log_tail()}")
                try:
                    if client.get(pending[0]).status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        logger.info("tritonserver ready: HTTP %s, gRPC %s", self.endpoints.http_url, self.endpoints.grpc_url)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask Triton to exit (SIGTERM), then kill it if it has not after ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("tritonserver ignored SIGTERM for %.0f s; killing it", timeout_s)
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM a process this one did not start (e.g. a detached Triton), then SIGKILL it after ``timeout_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        logger.warning("process %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
