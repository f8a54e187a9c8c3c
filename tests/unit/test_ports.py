"""Free ports for the servers a stack starts."""

import socket

from serve.processes import free_ports


def test_free_ports_are_distinct_and_bindable():
    for _ in range(20):  # ports asked for one at a time came back equal now and then (Triton then refused to start)
        ports = free_ports(3)
        assert len(set(ports)) == 3
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
