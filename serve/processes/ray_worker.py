"""What Easel changes in each Ray worker a stack starts (Ray's worker setup hook, :func:`setup`).

- Where Ray Serve's own servers listen (:mod:`serve.processes.loopback`).
- A response the proxy abandons is cancelled: when a gRPC client cancels a stream while Ray Serve's gRPC proxy is
  writing a message to it, the proxy's task ends with the handler's generators suspended at their ``yield``; they
  are only closed later, and never cancel the call to the replica, which streams on (its generation running, its key's
  slot held) until it ends. Here a proxy response still open when the proxy's task for it ends is cancelled, as the
  proxy does itself when the cancellation reaches it while it waits for the replica.
"""

from __future__ import annotations

import asyncio

from serve.processes.loopback import bind_serve_servers


def setup() -> None:
    """Ray worker setup hook: Serve's servers on the right addresses; abandoned proxy responses cancelled."""
    bind_serve_servers()
    cancel_abandoned_responses()


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
