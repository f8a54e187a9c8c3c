"""TCP ports for the servers a stack starts: the fixed defaults, and free ones."""

from __future__ import annotations

import random
import socket
from collections import deque
from contextlib import ExitStack
from pathlib import Path

TRITON_PORTS = (8003, 8001, 8002)
"""``easel up``'s Triton ports (HTTP, gRPC, metrics): gRPC and metrics are Triton's own defaults (8000, its HTTP
default, is the API's); ``deployments/prometheus/prometheus.yml`` scrapes metrics on 8002 as written."""
GRPC_PORT = 9000
"""``easel up``'s public gRPC API port (Ray Serve's default gRPC port)."""


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
RAY_WORKER_PORTS_END = 19999
"""The last of Ray's default worker ports (10002-19999)."""
_HANDED_OUT: deque[int] = deque(maxlen=256)
"""Ports this process handed out lately: a server given one may not have bound it yet (Triton binds its metrics port
seconds after it starts), so the next call must not hand it out again."""
_ENTROPY = random.SystemRandom()  # not the global generator, which a library may seed (then two picks repeat)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now.

    Where the kernel's ephemeral range is known they come from between Ray's worker ports and that range: a port the
    kernel chose stays free for any process's ``bind(0)`` until it is bound, and a server started meanwhile may take
    it (Ray's runtime-env agent took the API's port once in CI, and the proxy could not start). All are held open
    until each is found: ports asked for one at a time may come back equal. None is one this process handed out lately.
    """
    with ExitStack() as held:
        found: list[int] = []
        for port in [*_outside_the_ephemeral_range(), *[0] * count]:  # 0: the kernel's choice, where no range is left
            if port in _HANDED_OUT:
                continue
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                if port == 0:
                    raise
                continue
            found.append(sock.getsockname()[1])
            if len(found) == count:
                break
        _HANDED_OUT.extend(found)
        return found


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
