"""`easel up --detach` / `easel down` as a user runs them: real processes, free loopback ports."""

import ipaddress
import os
import re
import signal
import subprocess
import time

import httpx
import psutil
import pytest

from serve.processes import STACK_ENV, free_ports
from serve.processes.run_state import read_state
from serve.processes.signals import stack_processes
from tests import doc_blocks
from tests.certificates import self_signed
from tests.integration.conftest import EASEL, easel_down, easel_up, home_with_shared_engines

pytestmark = pytest.mark.integration


def test_the_docs_quick_start_and_blocks_run_then_down_leaves_no_process_and_a_broken_engine_is_named(tmp_path):
    """The README's quick start on a fresh EASEL_HOME, the guides' blocks on its stack, `easel down`, a broken engine.

    `easel up --detach` prints what the README shows; every runnable block of the guides runs against the same stack
    and prints what its guide shows; what the stack started is checked, then `easel down` stops it all; then a start
    whose UNet engine Triton cannot load says so in one line, exits 1 and leaves nothing running.
    """
    home = tmp_path / "home"
    stack = doc_blocks.Stack(home, *free_ports(3))
    first, *blocks = doc_blocks.every_runnable_block()
    up = stack.run(first)
    state = read_state(home / "run")
    port = stack.api_port
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert stack.matches(first, up.stdout), up.stdout  # what the README shows, on a fresh home
        for printed in ("gRPC API", "Triton gRPC", "Ray dashboard", "ray get-auth-token"):
            assert printed in up.stdout
        assert "First request" in up.stdout and "-> 200" in up.stdout
        for block in blocks:  # the rest of the quick start, then the guides', in order (keys last)
            ran = stack.run(block, timeout_s=180)
            assert ran.returncode == 0, (block.where, ran.stdout, ran.stderr)
            assert stack.matches(block, ran.stdout), (block.where, ran.stdout)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"{state.triton_http_url}/v2/health/ready", timeout=10).status_code == 200
        # The dashboard is up and, with Ray's token authentication, refuses calls without the token.
        assert httpx.get(f"{state.dashboard_url}/api/version", timeout=10).status_code == 401
        names = {p.name() for p in stack_processes(state.stack_id)}
        assert {"tritonserver", "raylet", "gcs_server", "triton_python_backend_stub"} <= names, names
        family = _family(state)
        titles = {_title(p) for p in family}
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= titles, titles
        # Every process `easel up` started, by parentage, carries the stack's mark (Ray's agents lost it once).
        assert [_title(p) for p in family if _mark(p) not in (state.stack_id, GONE)] == [], family
        urls = [*_triton_urls(state), state.grpc_address]
        ours = {port, stack.dashboard_port, *(int(u.rsplit(":", 1)[1].split("/")[0]) for u in urls)}
        listening = _listening(state.stack_id)
        assert ours <= {p for _, _, p in listening}, listening
        # Every socket the stack listens on (Ray's GCS, raylet, workers and agents included) is on loopback.
        assert [s for s in listening if not _loopback(s[1])] == [], listening
    finally:
        down = easel_down(stack.env)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert not psutil.pid_exists(state.pid) or not state.alive()
    # `easel up` stopped the stack itself: its SIGTERM handler survived ray.init (Ray's exits without this line).
    assert "stopping..." in (home / "run" / "easel-up.log").read_text()
    _assert_none_alive_5_s_after(family, state.stack_id)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert "nothing recorded" in easel_down(stack.env).stdout
    status = subprocess.run([*EASEL, "status"], env=stack.env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 3 and "no Easel stack runs" in status.stdout, status.stdout + status.stderr
    # The cached UNet engine broken: Triton cannot load it, and `easel up` names it and Triton's reason, in one line.
    for engine in (home / "engines").glob("*/unet/model.onnx"):
        with engine.open("r+b") as onnx:
            onnx.write(b"not an onnx graph" * 64)
    free = ("--port", "0", "--grpc-port", "0", "--dashboard-port", "0", "--triton-ports", "0,0,0")
    broken = subprocess.run(
        [*EASEL, "up", "--detach", *free],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert broken.returncode == 1, broken.stdout + broken.stderr
    said = [line for line in broken.stderr.splitlines() if line.startswith("Error:")]
    assert len(said) == 1 and "Triton could not load model 'unet': " in said[0], broken.stderr
    assert "onnx" in said[0].lower() or "protobuf" in said[0].lower(), said  # Triton's reason, from its log
    assert read_state(home / "run") is None or not read_state(home / "run").alive()
    assert "nothing recorded" in easel_down(stack.env).stdout  # the failed start stopped what it started


def test_up_serves_an_sdxl_folder_over_tls_and_down_knows_the_stack_died_and_stops_what_it_left(
    tmp_path, tiny_xl_model
):
    """`easel up --model DIR` on a StableDiffusionXLPipeline.save_pretrained folder, with a self-signed certificate
    (--tls-cert/--tls-key: its readiness checks and first request trust it, HTTPS and gRPC over TLS answer, plain
    HTTP and plain gRPC do not); then its process is killed. Its engines are the machine's cache's (the quick start
    test builds on a fresh home)."""
    env = {**os.environ, "EASEL_HOME": str(home_with_shared_engines(tmp_path / "home"))}
    port, dashboard_port = free_ports(2)
    repository = tmp_path / "repository"
    cert, key = self_signed(tmp_path)
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    up = easel_up(tmp_path, env, port, dashboard_port, "--model", str(tiny_xl_model), *tls)
    state = read_state(tmp_path / "home" / "run")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "First request" in up.stdout and "-> 200" in up.stdout
        assert f"https://127.0.0.1:{port}" in up.stdout and state.tls_cert == str(cert.resolve())
        _speaks_only_tls(state, cert)
        engines = sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("vectorize"))
        assert engines == ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]
        family = _family(state)
        os.kill(state.pid, signal.SIGKILL)  # the `easel up` process dies; Ray, Triton and the stubs are left behind
        psutil.wait_procs([psutil.Process(state.pid)], timeout=10)
        assert stack_processes(state.stack_id), "nothing was left behind to clean up"
    finally:
        down = easel_down(env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "was not running" in down.stdout and "leftovers stopped" in down.stdout
    _assert_none_alive_5_s_after(family, state.stack_id)
    assert read_state(tmp_path / "home" / "run") is None


def _speaks_only_tls(state, cert) -> None:
    """The stack's API answers HTTPS trusting ``cert`` (not this machine's CAs, not plain HTTP); gRPC over TLS too."""
    import grpc

    from serve.grpc_api import easel_pb2, easel_pb2_grpc
    from serve.processes.tls import client_verify

    assert state.api_url.startswith("https://")
    assert httpx.get(f"{state.api_url}/readyz", verify=client_verify(state.tls_cert), timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{state.api_url}/readyz", timeout=10)  # this machine's CAs do not know it: it is its own
    with pytest.raises(httpx.TransportError):
        httpx.get(state.api_url.replace("https://", "http://") + "/readyz", timeout=10)
    request = easel_pb2.GenerateRequest(prompt="a red heart icon", size="64x64", num_inference_steps=2)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(state.grpc_address, credentials) as channel:
        events = list(easel_pb2_grpc.EaselStub(channel).Generate(request, timeout=120))
    assert events[-1].result.images[0].data.startswith(b"\x89PNG")
    with grpc.insecure_channel(state.grpc_address) as channel, pytest.raises(grpc.RpcError):
        list(easel_pb2_grpc.EaselStub(channel).Generate(request, timeout=10))


def test_down_stops_an_up_that_is_still_building_within_15_s_and_says_what_it_stopped(tmp_path):
    """A fresh home: the build takes longer than --detach waits. `--detach` says where it goes on; `down` stops it."""
    env = {**os.environ, "EASEL_HOME": str(tmp_path / "home")}
    try:
        up = easel_up(tmp_path, env, *free_ports(2), "--detach-timeout", "3")
        state = read_state(tmp_path / "home" / "run")  # recorded from the first moment
        assert up.returncode == 0, up.stdout + up.stderr  # not a failure: the build goes on
        assert re.search(r"still (starting|building) after 3 s; it goes on in the background", up.stdout), up.stdout
        assert "easel-up.log" in up.stdout and "`easel down` stops it" in up.stdout
        assert state.phase in ("starting", "building") and state.alive() and state.api_url is None
        while (state := read_state(tmp_path / "home" / "run")).phase == "starting":  # until it has loaded its code
            time.sleep(0.5)
        assert state.phase == "building"
        again = subprocess.run([*EASEL, "up", "--port", "0"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 1 and "starting already (building" in again.stderr, again.stdout + again.stderr
        family = _family(state)
    finally:
        asked = time.monotonic()
        down = easel_down(env)
    assert down.returncode == 0 and f"stopped `easel up` (pid {state.pid}) while building" in down.stdout, down.stdout
    while alive := [_title(p) for p in [*family, *stack_processes(state.stack_id)] if _mark(p) is not GONE]:
        assert time.monotonic() - asked < 15, alive
        time.sleep(0.5)
    assert read_state(tmp_path / "home" / "run") is None


def _family(state) -> list[psutil.Process]:
    """Every process of the stack: marked with its id, or a descendant of `easel up` or of a marked process."""
    found = {p.pid: p for p in stack_processes(state.stack_id)}
    for parent in [psutil.Process(state.pid), *found.values()]:
        for child in parent.children(recursive=True):
            found.setdefault(child.pid, child)
    return list(found.values())


def _assert_none_alive_5_s_after(family: list[psutil.Process], stack_id: str) -> None:
    """5 s after `easel down` returned, no process of the stack's family and none marked with its id is alive."""
    time.sleep(5)
    alive = [f"{p.pid} {_title(p)}" for p in family if _mark(p) is not GONE]
    assert alive == [], alive
    assert [_title(p) for p in stack_processes(stack_id)] == []


def _title(process: psutil.Process) -> str:
    try:
        return (process.cmdline() or [process.name()])[0].strip()
    except psutil.Error:
        return "?"


GONE = "(exited)"


def _mark(process: psutil.Process) -> str | None:
    """The stack id in ``process``'s environment; :data:`GONE` if it exited (or is a zombie)."""
    try:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            return GONE
        return process.environ().get(STACK_ENV)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return GONE


def _triton_urls(state) -> list[str]:
    return [state.triton_http_url, state.triton_grpc_url, state.triton_metrics_url]


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def _listening(stack_id: str) -> set[tuple[str, str, int]]:
    """(process, address, port) of every socket the stack's processes listen on."""
    found = set()
    for process in stack_processes(stack_id):
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {(process.name(), c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found
