"""TCP ports for the servers a stack starts: the fixed defaults, and free ones."""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

TRITON_PORTS = (8003, 8001, 8002)
"""``easel up``'s Triton ports (HTTP, gRPC, metrics): gRPC and metrics are Triton's own defaults (8000, its HTTP
default, is the API's); ``deployments/prometheus/prometheus.yml`` scrapes metrics on 8002 as written."""
GRPC_PORT = 9000
"""``easel up``'s public gRPC API port (Ray Serve's default gRPC port)."""


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
RAY_WORKER_PORTS_END = 19999
"""The last of Ray's default worker ports (10002-19999)."""
LEASES = Path(tempfile.gettempdir()) / "easel-ports"
"""A file per port handed out lately, by any process on this machine, its modification time the lease's end. A server
given a port may bind it much later (Triton once its models are loaded; a test's service minutes after), and no other
process may hand it out meanwhile: in a full local run an ``easel up`` chose the port the other test worker had
handed to a service earlier, the service bound it while Triton loaded its models (13 s), and Triton could not start."""
LEASE_S = 600.0
"""How long a port handed out stays reserved by default (a stack's start takes at most 300 s)."""
_ENTROPY = random.SystemRandom()  # not the global generator, which a library may seed (then two picks repeat)


def free_ports(count: int, host: str = "127.0.0.1", lease_s: float = LEASE_S) -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now.

    Where the kernel's ephemeral range is known they come from between Ray's worker ports and that range: a port the
    kernel chose stays free for any process's ``bind(0)`` until it is bound, and a server started meanwhile may take
    it (Ray's runtime-env agent took the API's port once in CI, and the proxy could not start). All are held open
    until each is found: ports asked for one at a time may come back equal. None is one another hand-out, of this
    process or another, still reserves (:data:`LEASES`); these are reserved for ``lease_s``.
    """
    with ExitStack() as held:
        found: list[int] = []
        for port in [*_outside_the_ephemeral_range(), *[0] * count]:  # 0: the kernel's choice, where no range is left
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                if port == 0:
                    raise
                continue
            if _lease(bound := sock.getsockname()[1], lease_s):
                found.append(bound)
            if len(found) == count:
                break
        return found


def _lease(port: int, lease_s: float) -> bool:
    """Reserve ``port`` on this machine until ``lease_s`` from now; False if another lease on it has not ended.

    Where no lease can be written (a read-only temporary folder, another user's) the bind check alone decides.
    """
    path = LEASES / str(port)
    try:
        LEASES.mkdir(exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        with suppress(OSError):  # gone or not ours meanwhile: leave the port
            if path.stat().st_mtime <= time.time():  # that lease ended: its server bound the port, or never will
                return _extend(path, lease_s)
        return False
    except OSError:
        return True
    return _extend(path, lease_s)


def _extend(path: Path, lease_s: float) -> bool:
    """Set the lease's end ``lease_s`` from now; False if the file is not ours to change."""
    now = time.time()
    try:
        os.utime(path, (now, now + lease_s))
    except OSError:
        return False
    return True


def _outside_the_ephemeral_range(tries: int = 200) -> list[int]:
    """Random ports above Ray's worker ports and below the kernel's ephemeral range (none if it cannot be read)."""
    try:
        first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    candidates = range(RAY_WORKER_PORTS_END + 1, first_ephemeral)
    return _ENTROPY.sample(candidates, min(tries, len(candidates)))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    return free_ports(1, host)[0]


def port_holder(port: int, host: str = "127.0.0.1") -> str | None:
    """Who holds ``port`` at ``host``: ``pid N (its command line)``, else ``another user's process``.

    None when the port is free to bind.
    """
    import psutil

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a dead one's TIME_WAIT is free
        try:
            probe.bind((host, port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return f"pid {conn.pid} ({' '.join(psutil.Process(conn.pid).cmdline())[:80]})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return "another user's process"


class PortInUse(ValueError):
    """A port a start needs is held by another process."""


def check_free(wanted: list[tuple[str, str, int]]) -> None:
    """Raise :class:`PortInUse` naming the first of ``wanted`` (option, host, port; port 0 skipped) that is held."""
    for option, host, port in wanted:
        if port and (holder := port_holder(port, host)) is not None:
            raise PortInUse(
                f"port {port} ({option}) is in use by {holder}: stop it, or give {option} another port (0: a free one)"
            )
