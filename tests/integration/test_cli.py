"""`easel up --detach` / `easel down` as a user runs them: real processes, free loopback ports."""

import os
import subprocess
import sys

import httpx
import pytest

from serve.stack import read_state
from serve.triton.server import free_ports

pytestmark = pytest.mark.integration


def test_up_detach_serves_a_first_request_and_down_stops_everything(tmp_path):
    env = {**os.environ, "EASEL_HOME": str(tmp_path / "home")}
    port, dashboard_port = free_ports(2)
    easel = [sys.executable, "-m", "serve.cli"]
    up = subprocess.run(
        [
            *easel,
            "up",
            "--detach",
            "--port",
            str(port),
            "--dashboard-port",
            str(dashboard_port),
            "--repository",
            str(tmp_path / "repository"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    state = read_state(tmp_path / "home" / "run")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout
        assert "Triton gRPC" in up.stdout and "Ray dashboard" in up.stdout and "ray get-auth-token" in up.stdout
        assert "First request" in up.stdout and "-> 200" in up.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"{state.triton_http_url}/v2/health/ready", timeout=10).status_code == 200
        # The dashboard is up and, with Ray's token authentication, refuses calls without the token.
        assert httpx.get(f"{state.dashboard_url}/api/version", timeout=10).status_code == 401
    finally:
        down = subprocess.run([*easel, "down"], env=env, capture_output=True, text=True, timeout=180)
    assert down.returncode == 0 and "stopped" in down.stdout
    for pid in (state.pid, state.triton_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_up_serves_an_sdxl_folder_saved_by_diffusers(tmp_path, tiny_xl_model):
    """`easel up --model DIR` on a StableDiffusionXLPipeline.save_pretrained folder: built, served, answered."""
    env = {**os.environ, "EASEL_HOME": str(tmp_path / "home")}
    port, dashboard_port = free_ports(2)
    easel = [sys.executable, "-m", "serve.cli"]
    repository = tmp_path / "repository"
    command = [*easel, "up", "--detach", "--port", str(port), "--dashboard-port", str(dashboard_port)]
    command += ["--model", str(tiny_xl_model), "--repository", str(repository)]
    up = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "First request" in up.stdout and "-> 200" in up.stdout
        assert sorted(p.name for p in repository.iterdir() if not p.name.startswith("vectorize")) == [
            "text_encoder",
            "text_encoder_2",
            "unet",
            "vae_decoder",
        ]
    finally:
        down = subprocess.run([*easel, "down"], env=env, capture_output=True, text=True, timeout=180)
    assert down.returncode == 0 and "stopped" in down.stdout
