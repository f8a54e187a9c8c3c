"""Where Ray Serve's own servers listen: a single-machine Ray kept on loopback, the gRPC API on the API's host.

Ray's own servers (GCS, raylet, workers, agents) bind the node's address; :data:`serve.stack.RAY_ENV` makes that
127.0.0.1. Two Ray Serve servers ignore it and bind ``[::]``, every interface, with no setting to move them
(ray-project/ray#64623 adds a port range, not an address): each replica's inter-deployment gRPC server, and the
proxy's gRPC server (Easel's public gRPC API). The worker setup hook below, which Ray runs in each of its worker
processes, binds the first to the node's address, where callers reach it (127.0.0.1 on a single machine; the node's
own address on a cluster), and the second to the API's host (``$EASEL_API_HOST``, set by the stack), as the HTTP
proxy is. With the stack's certificate (:mod:`serve.processes.tls`) the gRPC proxy's port is a TLS one.
"""

from __future__ import annotations

import os

API_HOST_ENV = "EASEL_API_HOST"
"""The public API's host, which the stack sets for Ray's workers."""
ALL_INTERFACES = "[::]:"


def bind_serve_servers() -> None:
    """Ray worker setup hook: replicas' gRPC servers on the node's address, the gRPC proxy on the API's host."""
    from ray.serve._private import default_impl, replica
    from ray.util import get_node_ip_address

    from serve.processes.tls import grpc_credentials

    add_port = replica.add_port_to_grpc_server
    node = _bound(get_node_ip_address())
    replica.add_port_to_grpc_server = lambda server, address: add_port(server, address.replace(ALL_INTERFACES, node))
    add_address = default_impl.add_grpc_address
    api = _bound(os.environ.get(API_HOST_ENV, "127.0.0.1"))
    credentials = grpc_credentials()

    def add_api_address(server, address: str) -> None:
        address = address.replace(ALL_INTERFACES, api)
        if credentials is None:
            add_address(server, address)
        else:
            server.add_secure_port(address, credentials)

    default_impl.add_grpc_address = add_api_address


def _bound(host: str) -> str:
    """``host:`` as a gRPC address prefix (an IPv6 address in brackets)."""
    return f"[{host}]:" if ":" in host else f"{host}:"
