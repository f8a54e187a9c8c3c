"""Nothing lost: kill -9 of every Easel process with jobs queued and running; `easel up` again runs every one of them.

Each ends ``succeeded`` with the image an uninterrupted run gives (same seed), a video among them with the frames an
uninterrupted run gives. Jobs submitted while nothing runs wait and run when the workers are back. A vectorize version
installed through the API is served again, still current. Every job names a webhook: each one's delivery arrives,
signed, one delivery id per job, the one in flight at the kill sent again under its id. The stack's home is its own
(run state, stores); its engine cache is the shared one (the default stack's engines, motion UNet too).
"""

import io
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import httpx
import psutil
import pytest
from PIL import Image, ImageDraw

from build_engines.text_to_image.motion import random_motion_adapter
from build_engines.vectorize.runtime import TRAINED_DIR
from serve.jobs.model import JobStatus
from serve.jobs.sqlite import SqliteJobStore
from serve.priority import Priority
from serve.processes import free_ports
from serve.processes.run_state import read_state
from serve.processes.signals import stack_processes
from serve.protocol.schema import GenerationRequest
from tests.integration.conftest import EASEL, easel_down, easel_up, home_with_shared_engines, pictures, post_together

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

BODY = {"prompt": "a green circle icon", "size": "64x64", "num_inference_steps": 20}
VIDEO = {"prompt": "a green circle rolling", "size": "64x64", "frames": 8, "fps": 8, "steps": 20, "seed": 7}


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


def _icon() -> bytes:
    """A red disc on white, as a PNG."""
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill="red")
    png = io.BytesIO()
    image.save(png, "PNG")
    return png.getvalue()


def test_kill_9_of_every_process_loses_no_job_and_each_gives_the_uninterrupted_image(
    tmp_path, default_model, webhook_receiver
):
    env = {**os.environ, "EASEL_HOME": str(home_with_shared_engines(tmp_path / "home"))}
    store_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    port, dashboard_port = free_ports(2)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    wave = random_motion_adapter(default_model, tmp_path / "wave")  # the default stack's: its engines are cached
    options = ("--store", store_url, "--no-cache", "--no-first-request", "--motion-adapter", f"wave={wave}")
    # A webhook attempt may take 15 s: the calls the receiver holds are in flight at the kill (or their retries are).
    options += ("--webhook-hosts", webhook_receiver.allowed, "--webhook-timeout-s", "15")
    hook = webhook_receiver.url
    try:
        # No result cache: the uninterrupted runs compared below must be generated, not the jobs' answers again.
        up = easel_up(tmp_path, env, port, dashboard_port, *options)
        assert up.returncode == 0, up.stdout + up.stderr
        secret = subprocess.run([*EASEL, "webhooks", "secret"], env=env, capture_output=True, text=True, check=True)
        trained = shutil.copytree(TRAINED_DIR, tmp_path / "vectorize-v2")  # a version the API installs, current
        assert api.put("/v1/vectorize/models", json={"trained_dir": str(trained)}).status_code == 200
        # A quick job first: its webhook call is held by the receiver, unanswered, through the kill.
        webhook_receiver.answering.clear()
        quick = {**BODY, "num_inference_steps": 2, "seed": 99, "background": True, "webhook": hook}
        held_job = api.post("/v1/images/generations", json=quick).json()["id"]
        deadline = time.monotonic() + 120
        while not webhook_receiver.calls:
            assert time.monotonic() < deadline, "the quick job's webhook call did not come"
            time.sleep(0.2)
        # 14 low-priority jobs and a video: 8 run at once (4 per Gateway replica), the others wait in the queue, the
        # video last (a short video can finish before the first images reach step 2: it must still be there at the
        # kill). A job takes about 2.5 s here: the moment with jobs both mid-denoising and queued is seen in one read.
        bodies = [{**BODY, "seed": 100 + i, "priority": "low", "background": True, "webhook": hook} for i in range(14)]
        ids = [api.post("/v1/images/generations", json=body).json()["id"] for body in bodies]
        video_id = api.post("/v1/videos", json={**VIDEO, "priority": "low"}).json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = {j["id"]: j for j in api.get("/v1/jobs", params={"limit": 100}).json()["data"]}
            jobs = [listed[job_id] for job_id in ids]
            if any(j["progress"]["step"] >= 2 for j in jobs) and any(j["status"] == "queued" for j in jobs):
                break
            time.sleep(0.05)
        states = [j["status"] for j in jobs]
        video_state = listed[video_id]["status"]
        logger.info("at the kill: %s, the video %s", states, video_state)
        assert "running" in states and "queued" in states and video_state in ("running", "queued")

        state = read_state(tmp_path / "home" / "run")
        killed = _kill_everything(state.stack_id, state.pid)
        logger.info("killed %d processes; webhook calls held: %d", killed, len(webhook_receiver.calls))
        assert stack_processes(state.stack_id) == []
        webhook_receiver.answering.set()  # from here on it answers (the held call's stack is gone)

        # Submitted while nothing runs (as another node's Gateway would): they wait for the workers.
        store = SqliteJobStore(store_url)
        late_bodies = [{**BODY, "seed": 200 + i, "webhook": hook} for i in range(2)]
        for body in late_bodies:
            request = GenerationRequest.model_validate({**body, "background": True}).model_dump(mode="json")
            ids.append(store.submit(request, Priority.NORMAL)[0].id)
        store.close()

        again = easel_up(tmp_path, env, port, dashboard_port, *options)
        assert again.returncode == 0, again.stdout + again.stderr
        versions = api.get("/v1/vectorize/models").json()["data"]
        assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)], versions
        vectorized = api.post("/v1/vectorize", files={"file": ("icon.png", _icon(), "image/png")})
        assert vectorized.status_code == 200 and vectorized.headers["Easel-Model-Version"] == "2", vectorized.text
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            jobs = [api.get(f"/v1/jobs/{job_id}").json() for job_id in [*ids, video_id]]
            if all(j["status"] in ("succeeded", "failed", "canceled") for j in jobs):
                break
            time.sleep(1)
        assert [j["status"] for j in jobs] == [JobStatus.SUCCEEDED.value] * len(jobs), [j["status"] for j in jobs]
        *jobs, video = jobs
        assert api.get(f"/v1/videos/{video_id}").json()["status"] == "completed"
        # The uninterrupted runs, all at once (the loop merges their steps; a seed's image is its own in any batch).
        alone = api.post("/v1/videos", json=VIDEO).json()["id"]
        synchronous = [{k: v for k, v in b.items() if k not in ("background", "priority", "webhook")} for b in bodies]
        synchronous += [{k: v for k, v in b.items() if k != "webhook"} for b in late_bodies]
        solos = post_together(str(api.base_url), "/v1/images/generations", synchronous)
        for body, job, solo in zip([*bodies, *late_bodies], jobs, solos, strict=True):
            assert pictures(job) == pictures(solo.json()), f"job {job['id']} (seed {body['seed']}) differs from its run"
        while (solo := api.get(f"/v1/jobs/{alone}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline + 120
            time.sleep(0.5)
        assert pictures(video) == pictures(solo), "the video's frames differ from its uninterrupted run's"
        rerun = [j for j in jobs if j["status"] == "succeeded"]
        logger.info("attempts per job: %s", [SqliteJobStore(store_url).get(j["id"]).attempts for j in rerun])
        # Every job's webhook call came and was answered, signed; one delivery id per job; those held through the
        # kill were sent again under their ids.
        hooked = {held_job, *ids}
        calls = webhook_receiver.wait_for(secret.stdout.strip(), hooked)
        per_job = {job_id: {d for d, body, _ in calls if body["id"] == job_id} for job_id in hooked}
        assert all(len(delivery_ids) == 1 for delivery_ids in per_job.values()), per_job
        held = {delivery_id for delivery_id, _, answered in calls if not answered}
        sent = Counter(delivery_id for delivery_id, _, _ in calls)
        logger.info("webhook calls per delivery: %s (%d held through the kill)", sorted(sent.values()), len(held))
        assert per_job[held_job] <= held and all(sent[delivery_id] >= 2 for delivery_id in held)
        assert {body["status"] for _, body, _ in calls} == {"succeeded"}
    finally:
        api.close()
        easel_down(env)
