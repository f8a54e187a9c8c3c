"""Nothing lost: kill -9 of every Easel process with jobs queued and running; `easel up` again runs every one of them.

Each ends ``succeeded`` with the image an uninterrupted run gives (same seed). Jobs submitted while nothing runs wait
and run when the workers are back.
"""

import logging
import os
import signal
import time

import httpx
import psutil
import pytest

from serve.jobs.model import JobStatus
from serve.jobs.sqlite import SqliteJobStore
from serve.priority import Priority
from serve.processes import free_ports
from serve.processes.run_state import read_state
from serve.processes.signals import stack_processes
from serve.text_to_image.schema import GenerationRequest
from tests.integration.conftest import easel_down, easel_up, pictures

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

BODY = {"prompt": "a green circle icon", "size": "64x64", "num_inference_steps": 30}


def _kill_everything(stack_id: str, pid: int) -> int:
    """SIGKILL the `easel up` process and every process of its stack at once; how many there were."""
    processes = [psutil.Process(pid), *stack_processes(stack_id)]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=30)
    return len(processes)


def test_kill_9_of_every_process_loses_no_job_and_each_gives_the_uninterrupted_image(tmp_path):
    env = {**os.environ, "EASEL_HOME": str(tmp_path / "home")}
    store_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    port, dashboard_port = free_ports(2)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        # No result cache: the uninterrupted runs compared below must be generated, not the jobs' answers again.
        up = easel_up(tmp_path, env, port, dashboard_port, "--store", store_url, "--no-cache", "--no-first-request")
        assert up.returncode == 0, up.stdout + up.stderr
        # 10 low-priority jobs: 8 run at once (4 per Gateway replica), 2 wait in the queue.
        bodies = [{**BODY, "seed": 100 + i, "priority": "low", "background": True} for i in range(10)]
        ids = [api.post("/v1/images/generations", json=body).json()["id"] for body in bodies]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = [api.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
            if any(j["progress"]["step"] >= 2 for j in jobs) and any(j["status"] == "queued" for j in jobs):
                break
            time.sleep(0.1)
        states = [j["status"] for j in jobs]
        logger.info("at the kill: %s", states)
        assert "running" in states and "queued" in states

        state = read_state(tmp_path / "home" / "run")
        killed = _kill_everything(state.stack_id, state.pid)
        logger.info("killed %d processes", killed)
        assert stack_processes(state.stack_id) == []

        # Submitted while nothing runs (as another node's Gateway would): they wait for the workers.
        store = SqliteJobStore(store_url)
        late_bodies = [{**BODY, "seed": 200 + i} for i in range(2)]
        for body in late_bodies:
            request = GenerationRequest.model_validate({**body, "background": True}).model_dump(mode="json")
            ids.append(store.submit(request, Priority.NORMAL)[0].id)
        store.close()

        again = easel_up(tmp_path, env, port, dashboard_port, "--store", store_url, "--no-cache", "--no-first-request")
        assert again.returncode == 0, again.stdout + again.stderr
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            jobs = [api.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
            if all(j["status"] in ("succeeded", "failed", "canceled") for j in jobs):
                break
            time.sleep(1)
        assert [j["status"] for j in jobs] == [JobStatus.SUCCEEDED.value] * len(ids), [j["status"] for j in jobs]
        rerun = [j for j in jobs if j["status"] == "succeeded"]
        logger.info("attempts per job: %s", [SqliteJobStore(store_url).get(j["id"]).attempts for j in rerun])
        for body, job in zip([*bodies, *late_bodies], jobs, strict=True):
            synchronous = {k: v for k, v in body.items() if k not in ("background", "priority")}
            alone = api.post("/v1/images/generations", json=synchronous).json()
            assert pictures(job) == pictures(alone), f"job {job['id']} (seed {body['seed']}) differs from its solo run"
    finally:
        api.close()
        easel_down(env)
