"""Where the servers a stack starts listen: free ports; Triton on loopback, its model control behind its own key."""

import socket
import subprocess
import sys
from contextlib import ExitStack

import pytest

from serve.processes import free_ports, ports
from serve.processes.ports import EPHEMERAL_RANGE, RAY_WORKER_PORTS_END


def test_free_ports_are_distinct_and_bindable():
    for _ in range(20):  # ports asked for one at a time came back equal now and then (Triton then refused to start)
        ports = free_ports(3)
        assert len(set(ports)) == 3
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_handed_out_is_not_handed_out_again_while_its_server_may_not_have_bound_it():
    """Triton's metrics port, picked and not yet bound, was handed to the API's proxy next (it could not start)."""
    import random

    state = random.getstate()
    try:
        given = set(free_ports(3))
        random.seed(0)  # the global generator seeded (as a library may): the next picks are the OS's, and new
        again = set(free_ports(3))
        random.seed(0)
        assert given.isdisjoint(again) and again.isdisjoint(free_ports(40))
    finally:
        random.setstate(state)


def _unleased_free_ports(count: int) -> list[int]:
    """Ports the kernel chooses (from its ephemeral range, where no hand-out of ours leases one)."""
    with ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def test_a_port_another_process_handed_out_is_not_handed_out_here_until_its_lease_ends(monkeypatch):
    """An ``easel up`` chose the port the other test worker had handed to a service that had not bound it yet; the
    service bound it while Triton loaded its models, and Triton could not start. Both choose among the same six ports
    here: without the leases both would take the first three."""
    candidates = _unleased_free_ports(6)
    choose = f"import serve.processes.ports as p; p._outside_the_ephemeral_range = lambda: {candidates}; "
    other = subprocess.run(
        [sys.executable, "-c", choose + "print(*p.free_ports(3))"], capture_output=True, text=True, check=True
    )
    theirs = [int(port) for port in other.stdout.split()]
    monkeypatch.setattr(ports, "_outside_the_ephemeral_range", lambda: list(candidates))
    assert theirs == candidates[:3] and free_ports(3) == candidates[3:]

    first, *_ = _unleased_free_ports(1)
    monkeypatch.setattr(ports, "_outside_the_ephemeral_range", lambda: [first])
    assert free_ports(1, lease_s=0) == [first] and free_ports(1) == [first]  # a lease that ended: handed out again
    assert free_ports(1) != [first]  # that one's lease has not ended (the kernel chose another)


@pytest.mark.skipif(not EPHEMERAL_RANGE.exists(), reason="the kernel's ephemeral range is read from Linux's /proc")
def test_free_ports_are_outside_the_kernels_ephemeral_range():
    first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = free_ports(3)
    assert all(RAY_WORKER_PORTS_END < port < first_ephemeral for port in ports), ports


def test_triton_listens_on_loopback_and_its_model_control_needs_its_own_key(tmp_path):
    from serve.triton.control import CONTROL_HEADER
    from serve.triton.server import TritonServer

    first, second = (TritonServer(tmp_path, tmp_path / "triton.log") for _ in range(2))
    command = first.command()
    assert {f"--{kind}-address=127.0.0.1" for kind in ("http", "grpc", "metrics")} <= set(command)
    restricted = [arg for arg in command if "restricted" in arg]
    assert restricted == [
        f"--http-restricted-api=model-repository,shared-memory,trace,logging:{CONTROL_HEADER}={first.control_key}",
        f"--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:{CONTROL_HEADER}={first.control_key}",
    ]
    assert len(first.control_key) >= 32 and first.control_key != second.control_key
