"""Easel on a Ray cluster of three nodes on loopback: a Triton per model node, the head's GCS and a worker node killed
under load.

The module starts a head (no ``triton`` resource: it hosts the proxy; its GCS keeps the cluster's state in Redis, as
KubeRay's GCS fault tolerance has it) and two worker nodes with the ``triton`` resource (Ray's own
``cluster_utils.Cluster``, every node on 127.0.0.1), then ``Stack(address=...)`` deploys onto it as ``easel up
--address`` does. TextToImage runs two replicas, so each worker has one; the two Gateways (whose job
runners hold background jobs) run on two different nodes, so at least one is on a worker node. The stack's stores
(jobs, keys, results, webhooks) are in the same Redis server as the GCS's state (their own database), as a stack
across machines keeps them.
"""

import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from serve.jobs import open_job_store
from serve.paths import SERVE_CONFIG
from serve.processes import free_port
from serve.processes.gcs import NAMESPACE, REDIS_ADDRESS, find_gcs
from serve.protocol.schema import MAX_STEPS
from serve.stack import RAY_ENV, Stack, StackOptions
from serve.triton.node import NODE_RESOURCE
from tests.integration.conftest import LOCAL, engine_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]
logger = logging.getLogger(__name__)

BODY = {"prompt": "a red heart icon", "size": "64x64", "num_inference_steps": 4}
REQUEST_TIMEOUT_S = 120.0  # no request may hang: each one ends (answered or refused) within this
RETRY_WINDOW_S = 60.0  # after a node dies, requests may fail for at most this long


@pytest.fixture(scope="module")
def cluster(redis_url):
    from ray._private.gcs_utils import cleanup_redis_storage
    from ray.cluster_utils import Cluster

    assert all(os.environ.get(name) == value for name, value in RAY_ENV.items())  # tests/conftest.py: nodes inherit
    loopback = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 << 20}
    redis = urlparse(redis_url)
    storage = {REDIS_ADDRESS: redis.netloc, NAMESPACE: "easel-test-cluster"}  # the head's GCS state, in Redis
    os.environ.update(storage)  # read by the head and its GCS (`ray start --head` with these set does the same)
    try:
        head = {"num_cpus": 2, "include_dashboard": False, "gcs_server_port": free_port(), **loopback}
        cluster = Cluster(initialize_head=True, head_node_args=head)
    finally:
        for name in storage:
            os.environ.pop(name)
    workers = [cluster.add_node(num_cpus=2, resources={NODE_RESOURCE: 1}, **loopback) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        gcs = find_gcs(cluster.address)  # restarted by the stack: the cluster no longer knows it
        cluster.shutdown()
        if gcs is not None and gcs.is_running():
            gcs.kill()
        cleanup_redis_storage(redis.hostname, redis.port, "", False, storage[NAMESPACE])


@pytest.fixture(scope="module")
def stack(cluster, new_redis_database, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "TextToImage":  # one replica on each worker node (Serve may otherwise pack both)
            deployment.pop("autoscaling_config")
            deployment.update(num_replicas=2, max_replicas_per_node=1)
        if deployment["name"] == "Gateway":  # two nodes: a worker node's Gateway holds jobs when that node dies
            deployment.update(max_replicas_per_node=1)
    (run_dir / "serve_config.yaml").write_text(yaml.safe_dump(config))
    options = StackOptions(
        port=0,
        dashboard=False,
        run_dir=run_dir,
        cache_bytes=0,
        serve_config=run_dir / "serve_config.yaml",
        address=cluster[0].address,
        store_url=new_redis_database(),  # the GCS's state is in database 0
    )
    with Stack(options) as stack:
        yield stack


def _unet_calls(triton_http_url: str, models: tuple[str, ...]) -> int:
    """Successful inferences of ``models`` on one Triton (its statistics API)."""
    total = 0
    for model in models:
        stats = LOCAL.get(f"{triton_http_url}/v2/models/{model}/stats", timeout=10).json()
        total += sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"])
    return total


def _generate(api_url: str, seed: int) -> tuple[float, int]:
    """(seconds taken, status code; 0 for a transport error)."""
    start = time.monotonic()
    try:
        code = LOCAL.post(f"{api_url}/v1/images/generations", json={**BODY, "seed": seed}, timeout=REQUEST_TIMEOUT_S)
        return time.monotonic() - start, code.status_code
    except httpx.TransportError:
        return time.monotonic() - start, 0


def _replica_nodes(deployment: str) -> list[str]:
    """The node of each live replica of ``deployment`` (Ray's actor table)."""
    from ray._private.state import actors

    return [
        a["Address"]["NodeID"]
        for a in actors().values()
        if a["ActorClassName"].endswith(f":{deployment}") and a["State"] == "ALIVE"
    ]


def test_each_model_node_has_its_own_triton_and_replicas_that_use_it(cluster, stack):
    endpoints = stack.node_tritons.endpoints()
    workers = {node.node_id for node in cluster[1]}
    assert set(endpoints) == workers  # the head has no `triton` resource: no Triton there
    assert len({e.grpc_url for e in endpoints.values()}) == 2
    assert sorted(_replica_nodes("TextToImage")) == sorted(workers)
    assert set(_replica_nodes("Vectorizer")) <= workers
    models = engine_names(stack)
    before = {node: _unet_calls(e.http_url, models) for node, e in endpoints.items()}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda seed: _generate(stack.info.api_url, seed), range(16)))
    assert all(code == 200 for _, code in answers), answers
    served = {node: _unet_calls(e.http_url, models) - before[node] for node, e in endpoints.items()}
    # Both nodes' replicas served, each on its own Triton (a canary every 10 s adds one call at most meanwhile).
    assert all(calls >= 4 for calls in served.values()), served


def test_the_head_s_gcs_killed_under_load_is_restarted_while_requests_are_answered_and_no_job_is_lost(cluster, stack):
    import ray

    api = stack.info.api_url
    assert stack.gcs is not None and stack.gcs.storage.startswith("redis"), stack.gcs  # kept: on this machine
    results: list[tuple[float, int, str | None]] = []  # (sent at, status, Retry-After)
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(base_url=api, timeout=REQUEST_TIMEOUT_S) as http:
            seed = 5000 + 1000 * index
            while not stop.is_set():
                sent = time.monotonic()
                answer = http.post("/v1/images/generations", json={**BODY, "seed": seed})
                results.append((sent, answer.status_code, answer.headers.get("Retry-After")))
                seed += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    job = {**BODY, "num_inference_steps": 20, "background": True}
    jobs = [LOCAL.post(f"{api}/v1/images/generations", json={**job, "seed": 300 + i}, timeout=30) for i in range(4)]
    old_pid = stack.gcs.pid
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    jobs += [LOCAL.post(f"{api}/v1/images/generations", json={**job, "seed": 400 + i}, timeout=30) for i in range(4)]
    while not (stack.gcs.pid != old_pid and stack.gcs.running()) and time.monotonic() - killed_at < 30:
        time.sleep(0.1)
    restarted_s = time.monotonic() - killed_at
    time.sleep(15)
    stop.set()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT_S + 10)
    after = [(code, retry) for sent, code, retry in results if sent >= killed_at]
    failed = [(code, retry) for code, retry in after if code != 200]
    logger.info(
        "GCS killed under load: restarted after %.1f s; %d requests since, %d failed %s",
        restarted_s,
        len(after),
        len(failed),
        failed,
    )
    assert stack.gcs.pid != old_pid and restarted_s < 30  # the GCS is back ...
    assert {n["NodeID"] for n in ray.nodes() if n["Alive"]} >= {w.node_id for w in cluster[1]}  # ... with the nodes
    assert after and all(code == 200 or (code == 503 and retry) for code, retry in after), failed
    assert any(code == 200 for sent, code, _ in results if killed_at <= sent < killed_at + 5), results
    assert all(j.status_code == 202 for j in jobs), [j.text for j in jobs]
    statuses: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        statuses = [LOCAL.get(f"{api}/v1/jobs/{j.json()['id']}", timeout=30).json()["status"] for j in jobs]
        if all(s == "succeeded" for s in statuses):
            break
        time.sleep(1)
    assert statuses == ["succeeded"] * len(jobs)  # none lost


def test_a_worker_node_killed_under_load_costs_a_short_window_and_no_job(cluster, stack):
    api = stack.info.api_url
    results: list[tuple[float, float, int]] = []  # (sent at, seconds taken, status)
    stop = threading.Event()

    def client(worker: int) -> None:
        seed = 1000 * worker
        while not stop.is_set():
            sent = time.monotonic()
            taken, code = _generate(api, seed)
            results.append((sent, taken, code))
            seed += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    long_job = {**BODY, "num_inference_steps": MAX_STEPS, "background": True}  # still running when the node dies
    jobs = [
        LOCAL.post(f"{api}/v1/images/generations", json={**long_job, "seed": 100 + i}, timeout=30) for i in range(8)
    ]  # each replica's runner takes up to 4: both nodes run some
    assert all(j.status_code == 202 for j in jobs), [j.text for j in jobs]
    time.sleep(2)
    gateways = _replica_nodes("Gateway")
    victim = next(node for node in cluster[1] if node.node_id in gateways)  # its Gateway's runner holds jobs
    killed_at = time.monotonic()
    cluster[0].remove_node(victim, allow_graceful=False)
    time.sleep(RETRY_WINDOW_S + 15)  # the window, then requests enough to see it closed
    stop.set()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT_S + 10)
    failed = [sent - killed_at for sent, _, code in results if code != 200]
    logger.info(
        "node killed under load: %d requests, %d failed (sent %s s after the kill), longest %.1f s",
        len(results),
        len(failed),
        [round(t, 1) for t in failed],
        max(taken for _, taken, _ in results),
    )
    assert max(taken for _, taken, _ in results) < REQUEST_TIMEOUT_S  # nothing hung
    after_window = [code for sent, _, code in results if sent > killed_at + RETRY_WINDOW_S]
    assert after_window and all(code == 200 for code in after_window), results
    assert any(code == 200 for sent, _, code in results if sent < killed_at)
    deadline = time.monotonic() + 120
    statuses = []
    while time.monotonic() < deadline:
        statuses = [LOCAL.get(f"{api}/v1/jobs/{j.json()['id']}", timeout=30).json()["status"] for j in jobs]
        if all(s == "succeeded" for s in statuses):
            break
        time.sleep(1)
    assert statuses == ["succeeded"] * len(jobs)  # none lost: the dead node's were run again elsewhere
    store = open_job_store(stack.options.store)
    attempts = [store.get(j.json()["id"]).attempts for j in jobs]
    store.close()
    logger.info("background jobs: all succeeded, attempts %s", attempts)
    assert max(attempts) >= 2  # the dead node's Gateway's jobs were claimed again after their lease ran out
