"""TCP ports for the servers a stack starts: the fixed defaults, and free ones."""

from __future__ import annotations

import socket
from contextlib import ExitStack

TRITON_PORTS = (8003, 8001, 8002)
"""``easel up``'s Triton ports (HTTP, gRPC, metrics): gRPC and metrics are Triton's own defaults (8000, its HTTP
default, is the API's); ``deployments/prometheus/prometheus.yml`` scrapes metrics on 8002 as written."""
GRPC_PORT = 9000
"""``easel up``'s public gRPC API port (Ray Serve's default gRPC port)."""


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
