"""Free ports for the servers a stack starts."""

import socket

import pytest

from serve.processes import free_ports
from serve.processes.ports import EPHEMERAL_RANGE, RAY_WORKER_PORTS_END


def test_free_ports_are_distinct_and_bindable():
    for _ in range(20):  # ports asked for one at a time came back equal now and then (Triton then refused to start)
        ports = free_ports(3)
        assert len(set(ports)) == 3
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.skipif(not EPHEMERAL_RANGE.exists(), reason="the kernel's ephemeral range is read from Linux's /proc")
def test_free_ports_are_outside_the_kernels_ephemeral_range():
    first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = free_ports(3)
    assert all(RAY_WORKER_PORTS_END < port < first_ephemeral for port in ports), ports
