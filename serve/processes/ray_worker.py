"""What Easel changes in each Ray worker a stack starts (Ray's worker setup hook, :func:`setup`).

- Where Ray Serve's own servers listen (:mod:`serve.processes.loopback`).
- A response the proxy abandons is cancelled: when a gRPC client cancels a stream while Ray Serve's gRPC proxy is
  writing a message to it, the proxy's task ends with the handler's generators suspended at their ``yield``; they
  are only closed later, and never cancel the call to the replica, which streams on (its generation running, its key's
  slot held) until it ends. Here a proxy response still open when the proxy's task for it ends is cancelled, as the
  proxy does itself when the cancellation reaches it while it waits for the replica.
- A gRPC call whose replica died under it (a Gateway killed) is ``UNAVAILABLE`` (retry), not Ray Serve's
  ``INTERNAL``, as the HTTP proxy's answer for it is a 503 (:class:`serve.wire.ShapedProxyErrors`). Found by
  ``easel soak``: 3 of 18137 requests, gRPC calls in flight in a Gateway it killed.
"""

from __future__ import annotations

import asyncio

from serve.processes.loopback import bind_serve_servers


def setup() -> None:
    """Ray worker setup hook: Serve's servers on the right addresses; the proxy's responses shaped as above."""
    bind_serve_servers()
    cancel_abandoned_responses()
    replica_deaths_unavailable()


def replica_deaths_unavailable() -> None:
    """Make Ray Serve's gRPC proxy answer ``UNAVAILABLE`` for a call whose replica died, not ``INTERNAL``."""
    import grpc
    from ray.exceptions import RayActorError
    from ray.serve._private import proxy
    from ray.serve._private.proxy_request_response import ResponseStatus

    status_of = proxy.get_grpc_response_status
    if getattr(status_of, "replica_deaths_unavailable", False):  # done already in this process
        return

    def shaped(exc: BaseException, request_timeout_s: float | None, request_id: str) -> ResponseStatus:
        status = status_of(exc, request_timeout_s, request_id)
        if isinstance(exc, RayActorError) and status.code == grpc.StatusCode.INTERNAL:
            return ResponseStatus(
                code=grpc.StatusCode.UNAVAILABLE,
                is_error=True,
                message=f"the replica serving this call stopped; retry it ({status.message})",
            )
        return status

    shaped.replica_deaths_unavailable = True
    proxy.get_grpc_response_status = shaped


def cancel_abandoned_responses() -> None:
    """Make a Ray Serve proxy response cancel its call when the task that reads it ends before it is done."""
    from ray.serve._private.proxy_response_generator import ProxyResponseGenerator

    init = ProxyResponseGenerator.__init__
    if getattr(init, "cancels_with_its_task", False):  # done already in this process
        return

    def init_cancelled_with_its_task(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop running here
            return
        if task is not None:
            task.add_done_callback(lambda _: None if self._done else self._response.cancel())

    init_cancelled_with_its_task.cancels_with_its_task = True
    ProxyResponseGenerator.__init__ = init_cancelled_with_its_task
