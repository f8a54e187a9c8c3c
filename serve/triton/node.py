"""A Triton on every Ray node that hosts model replicas (``easel up --address``), and replicas that find their own.

Nodes that advertise the :data:`NODE_RESOURCE` custom resource host the TextToImage and Vectorizer replicas (each asks
for a sliver of it, as under KubeRay, where the Triton is a sidecar). The stack keeps one :class:`NodeTriton` actor
pinned to each such node (:class:`NodeTritons`, which also serves nodes that join later); the actor starts Triton on
the node's loopback and supervises it. A replica given :data:`THIS_NODE` as its Triton address asks its own node's
actor where Triton listens (:func:`grpc_url_on_this_node`), so no UNet step crosses the network.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from serve.processes.managed import STACK_ENV
from serve.processes.supervisor import Supervisor
from serve.triton.server import TritonEndpoints, TritonServer

logger = logging.getLogger(__name__)

NODE_RESOURCE = "triton"
"""Custom resource of nodes that run model replicas and a Triton (the same name as in the KubeRay manifest)."""
NODE_RESOURCE_PER_REPLICA = 0.01
"""What each model replica asks of it (a sliver: a node hosts as many replicas as its CPUs allow)."""
THIS_NODE = "this-node"
"""``triton_grpc_url`` for replicas that use their own node's Triton."""
NAMESPACE = "easel"
FIND_TIMEOUT_S = 300.0
SYNC_S = 5.0


def actor_name(node_id: str) -> str:
    """The name of the node's :class:`NodeTriton` actor."""
    return f"easel-triton-{node_id}"


class NodeTriton:
    """A Ray actor (:class:`NodeTritons` makes it one): Triton on its node's loopback, restarted when it fails."""

    def __init__(self, stack_id: str, repository: str, log_dir: str, models: list, pools: dict) -> None:
        import ray

        os.environ[STACK_ENV] = stack_id  # Triton and its stubs carry the stack's mark, for `easel down`
        node = ray.get_runtime_context().get_node_id()
        log = Path(log_dir) / f"triton-{node[:12]}.log"
        self.server = TritonServer(Path(repository), log, models, pools=pools).start()
        self.supervisor = Supervisor()
        self.supervisor.watch(self.server, self.server.check)

    def endpoints(self) -> TritonEndpoints:
        """Where this node's Triton listens."""
        return self.server.endpoints

    def stop(self) -> None:
        """Stop supervising and stop Triton."""
        self.supervisor.stop()


class NodeTritons:
    """One :class:`NodeTriton` on every alive node with :data:`NODE_RESOURCE`, checked every :data:`SYNC_S`."""

    def __init__(self, stack_id: str, repository: Path, log_dir: Path, models: list, pools: dict) -> None:
        import ray

        self.args = (stack_id, str(repository), str(log_dir), models, pools)
        self.actor_class = ray.remote(num_cpus=0, max_restarts=0)(NodeTriton)
        self.actors: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-tritons", daemon=True)

    def start(self, timeout_s: float = 300.0) -> NodeTritons:
        """Start a Triton on every model node now (waiting until each is ready), then keep watching for new ones."""
        self.sync(timeout_s)
        if not self.actors:
            raise RuntimeError(f"no alive Ray node has the {NODE_RESOURCE!r} resource to host model replicas")
        self._thread.start()
        return self

    def sync(self, timeout_s: float = 300.0) -> None:
        """Start actors on model nodes that have none; forget the actors of nodes that left."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"] and n["Resources"].get(NODE_RESOURCE, 0) > 0}
        alive = set(nodes)
        for gone in set(self.actors) - alive:
            logger.warning("node %s left; its Triton went with it", gone[:12])
            del self.actors[gone]
        new = {
            node: self.actor_class.options(
                name=actor_name(node),
                namespace=NAMESPACE,
                get_if_exists=True,  # one whose start timed out in an earlier round: wait for it again
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                num_gpus=nodes[node]["Resources"].get("GPU", 0),  # Triton holds the node's GPUs (CUDA_VISIBLE_DEVICES)
            ).remote(*self.args)
            for node in alive - set(self.actors)
        }
        for node, actor in new.items():
            endpoints = ray.get(actor.endpoints.remote(), timeout=timeout_s)
            logger.info("node %s: Triton ready on %s", node[:12], endpoints.grpc_url)
            self.actors[node] = actor

    def endpoints(self) -> dict[str, TritonEndpoints]:
        """Each model node's Triton endpoints, by node id."""
        import ray

        return {node: ray.get(actor.endpoints.remote(), timeout=30) for node, actor in self.actors.items()}

    def _run(self) -> None:
        while not self._stop.wait(SYNC_S):
            try:
                self.sync()
            except Exception:  # a node that dies mid-start: the next round tries again
                logger.exception("starting a node's Triton failed; retrying in %.0f s", SYNC_S)

    def stop(self) -> None:
        """Stop watching; stop every node's Triton."""
        import ray

        self._stop.set()
        for actor in self.actors.values():
            try:
                ray.get(actor.stop.remote(), timeout=30)
                ray.kill(actor)
            except Exception as error:  # its node is gone
                logger.warning("a node's Triton did not stop cleanly: %s", error)


def grpc_url_on_this_node(url: str, timeout_s: float = FIND_TIMEOUT_S) -> str:
    """``url`` itself, or for :data:`THIS_NODE` the gRPC address of the Triton on the caller's node.

    Waits for the node's actor (a node that just joined gets one within :data:`SYNC_S` plus Triton's start).
    """
    if url != THIS_NODE:
        return url
    import ray

    node = ray.get_runtime_context().get_node_id()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actor = ray.get_actor(actor_name(node), namespace=NAMESPACE)
            return ray.get(actor.endpoints.remote(), timeout=timeout_s).grpc_url
        except (ValueError, ray.exceptions.RayError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Triton on node {node} after {timeout_s:.0f} s") from None
            time.sleep(1.0)
