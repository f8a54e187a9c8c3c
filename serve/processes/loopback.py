"""Keep a single-machine Ray on loopback.

Ray's own servers (GCS, raylet, workers, agents) bind the node's address; :data:`serve.stack.RAY_ENV` makes that
127.0.0.1. One server ignores it: every Ray Serve replica starts an inter-deployment gRPC server on ``[::]:0``, every
interface, with no setting to move it (ray-project/ray#64623 adds a port range, not an address). The worker setup
hook below, run by Ray in each of its worker processes, binds that server to 127.0.0.1 instead; callers reach it
at the node's address, which is 127.0.0.1 too.
"""

from __future__ import annotations

ALL_INTERFACES = "[::]:"
LOOPBACK = "127.0.0.1:"


def bind_replica_servers_to_loopback() -> None:
    """Ray worker setup hook: Serve replicas' inter-deployment gRPC server listens on 127.0.0.1 only."""
    from ray.serve._private import replica

    add_port = replica.add_port_to_grpc_server

    def add_loopback_port(server, address: str) -> int:
        return add_port(server, address.replace(ALL_INTERFACES, LOOPBACK))

    replica.add_port_to_grpc_server = add_loopback_port
