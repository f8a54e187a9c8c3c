"""Triton's model control, kept to the process that supervises the server.

Model control (load, unload), shared-memory registration, tracing and logging settings answer only requests that carry
the server's own key (:data:`CONTROL_HEADER`, random per server, known to the process that supervises it): a local
process or a web page that can only send requests to Triton's loopback ports cannot unload the UNet. Health, metadata,
statistics and inference stay open on loopback, as the replicas and tools use them. The key is on tritonserver's
command line (it takes it nowhere else), which local users who can read ``/proc`` can see.
"""

from __future__ import annotations

import httpx

CONTROL_HEADER = "easel-triton-control"
"""The header (gRPC metadata: ``triton-grpc-protocol-`` before it) that carries a server's control key."""
RESTRICTED = "model-repository,shared-memory,trace,logging"
"""Triton's APIs that answer only with the control key (``--http-restricted-api``, ``--grpc-restricted-protocol``)."""
CONTROL_KEY_ENV = "EASEL_TRITON_CONTROL_KEY"
"""Where the stack hands its Triton's control key to its Ray workers (the model residency loads and unloads)."""


class TritonControl:
    """Triton's model control API (explicit mode), with the server's control key: load and unload models."""

    def __init__(self, http_url: str, key: str) -> None:
        self._http = httpx.AsyncClient(base_url=http_url, headers={CONTROL_HEADER: key}, timeout=600)

    async def load(self, name: str) -> None:
        """Load ``name`` (its files as the repository holds them); raise ``RuntimeError`` if Triton refuses."""
        await self._post(name, "load")

    async def unload(self, name: str) -> None:
        """Unload ``name``: Triton finishes what it is running, then frees it."""
        await self._post(name, "unload")

    async def _post(self, name: str, action: str) -> None:
        response = await self._http.post(f"/v2/repository/models/{name}/{action}")
        if response.status_code != 200:
            raise RuntimeError(f"{action} of Triton model {name} failed: {response.status_code} {response.text[:200]}")
