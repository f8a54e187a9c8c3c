"""The supervisor and process cleanup, on plain sleeping processes (no servers)."""

import asyncio
import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from serve.processes import STACK_ENV, ManagedProcess, ProcessStartError, Supervisor
from serve.processes.signals import children_paused, stack_processes, stop_stack_processes

# A child that ignores SIGTERM and starts a grandchild of its own (which inherits its process group and environment).
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
    "time.sleep(600)\n"
)


def _sleeper(tmp_path, name="sleeper", code="import time; time.sleep(600)", ready=lambda: True) -> ManagedProcess:
    return ManagedProcess(name, lambda: [sys.executable, "-c", code], tmp_path / f"{name}.log", ready)


def _wait(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_stop_escalates_to_sigkill_for_the_whole_group_including_grandchildren(tmp_path):
    process = _sleeper(tmp_path, code=STUBBORN).start(timeout_s=10)
    _wait(lambda: len(psutil.Process(process.pid).children()) == 1)
    grandchild = psutil.Process(process.pid).children()[0]
    started = time.monotonic()
    process.stop(grace_s=0.5)
    assert time.monotonic() - started < 10
    assert not process.running()
    _wait(lambda: not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE)


def test_a_process_that_exits_before_it_is_ready_fails_fast_with_its_log(tmp_path):
    process = _sleeper(tmp_path, code="import sys; print('broken config'); sys.exit(3)", ready=lambda: False)
    started = time.monotonic()
    with pytest.raises(ProcessStartError, match="broken config"):
        process.start(timeout_s=30)
    assert time.monotonic() - started < 10


def test_the_supervisor_restarts_a_killed_process_and_records_it(tmp_path):
    supervisor = Supervisor()
    process = _sleeper(tmp_path).start(timeout_s=10)
    watch = supervisor.watch(process)
    try:
        first = process.pid
        os.kill(first, 9)
        _wait(lambda: watch.restarts == 1 and process.running())
        assert process.pid != first
        assert [e.what.split()[0] for e in supervisor.events] == ["exited", "restarted"]
    finally:
        supervisor.stop(grace_s=1)
    assert not process.running()


def test_a_failing_check_restarts_after_repeated_failures_and_pausing_suspends_everything(tmp_path):
    supervisor = Supervisor()
    healthy = {"value": True}
    process = _sleeper(tmp_path).start(timeout_s=10)
    watch = supervisor.watch(process, check=lambda: None if healthy["value"] else "sick", restart_after=2)
    try:
        with supervisor.paused():
            healthy["value"] = False
            os.kill(process.pid, 19)  # SIGSTOP: looks dead to a check, on purpose
            time.sleep(1.5)
            assert watch.restarts == 0 and not supervisor.events
            os.kill(process.pid, 18)
        _wait(lambda: watch.restarts == 1)
        assert [e.what for e in supervisor.events][:2] == ["sick", "sick"]
    finally:
        supervisor.stop(grace_s=1)


def test_stack_processes_are_found_by_their_mark_and_stopped_even_when_orphaned(tmp_path):
    stack_id = uuid.uuid4().hex[:12]
    env = {**os.environ, STACK_ENV: stack_id}
    parent = subprocess.Popen([sys.executable, "-c", STUBBORN], env=env, start_new_session=True)
    _wait(lambda: len(stack_processes(stack_id)) == 2)
    parent.kill()  # the grandchild is orphaned, still marked
    parent.wait()
    _wait(lambda: len(stack_processes(stack_id)) == 1)
    assert stop_stack_processes(stack_id, grace_s=0.5) == 1
    assert stack_processes(stack_id) == []


# A marked parent whose child names itself as Ray names its agents (Ray's setproctitle), then both sleep. Run from a
# file: the guard against servers reads "raylet" in a command line.
RENAMED_CHILD = """
import subprocess, sys, time
child = "import time, ray._raylet as r; r.setproctitle('ray::DashboardAgent'); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", child])
time.sleep(600)
"""


@pytest.mark.parametrize("keeps_environment", [False, True], ids=["setproctitle-default", "ray-env"])
def test_a_child_renamed_by_setproctitle_is_found_and_stopped(tmp_path, keeps_environment):
    """setproctitle writes over the environment block (the mark); the stack's Ray settings (SPT_NOENV) prevent it."""
    from serve.stack import RAY_ENV

    stack_id = uuid.uuid4().hex[:12]
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV} | {STACK_ENV: stack_id}
    script = tmp_path / "renamed_child.py"
    script.write_text(RENAMED_CHILD)
    parent = subprocess.Popen(
        [sys.executable, str(script)], env=env | (RAY_ENV if keeps_environment else {}), start_new_session=True
    )
    try:
        _wait(lambda: any(_renamed(p) for p in stack_processes(stack_id)))
        child = next(p for p in stack_processes(stack_id) if _renamed(p))
        assert (child.environ().get(STACK_ENV) == stack_id) is keeps_environment
        assert stop_stack_processes(stack_id, grace_s=2) == 2
        assert stack_processes(stack_id) == [] and not child.is_running()
    finally:
        parent.kill()
        parent.wait()


def _renamed(process: psutil.Process) -> bool:
    try:
        return process.cmdline()[:1] == ["ray::DashboardAgent"]
    except psutil.Error:
        return False


def test_children_paused_stops_and_resumes_child_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with children_paused():  # returns once SIGSTOP has taken effect
            assert psutil.Process(child.pid).status() == psutil.STATUS_STOPPED
        deadline = time.monotonic() + 5  # SIGCONT, like SIGSTOP, takes effect when the child next runs
        while psutil.Process(child.pid).status() == psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert psutil.Process(child.pid).status() != psutil.STATUS_STOPPED
    finally:
        child.kill()
        child.wait()


def test_a_proxy_response_still_open_when_its_task_ends_is_cancelled():
    from ray.serve._private.proxy_response_generator import ProxyResponseGenerator
    from ray.serve.handle import DeploymentResponseGenerator

    from serve.processes.ray_worker import cancel_abandoned_responses

    class Response(DeploymentResponseGenerator):
        def __init__(self) -> None:  # noqa: D107 - no Ray behind it
            self.cancels = 0

        def cancel(self) -> None:
            self.cancels += 1

    cancel_abandoned_responses()
    responses = {"abandoned": Response(), "finished": Response()}

    async def proxy_task(name: str) -> None:  # the proxy's task for one request: left mid-stream, or done
        generator = ProxyResponseGenerator(responses[name])
        generator._done = name == "finished"

    async def scenario() -> None:
        for name in responses:
            await asyncio.create_task(proxy_task(name))
        await asyncio.sleep(0)  # done callbacks run

    asyncio.run(scenario())
    assert responses["abandoned"].cancels == 1 and responses["finished"].cancels == 0


def test_a_triton_that_dies_while_its_stubs_are_counted_is_left_to_the_supervisor_not_reloaded(tmp_path, monkeypatch):
    """Killed between the two looks, Triton has no children (its stubs went to init): no model is reloaded."""
    from serve.triton.server import TritonServer
    from serve.vectorize.spec import FEATURES

    server = TritonServer(tmp_path, tmp_path / "triton.log", models=[FEATURES])
    server.managed.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    reloads = []
    monkeypatch.setattr(server, "reload", reloads.append)
    try:
        assert server.check() is not None and reloads == ["vectorize_features"]  # alive, no stub: a stub died

        def killed_while_counting(listed: bool = False) -> dict:
            server.managed.process.kill()
            server.managed.process.wait()
            return {}

        monkeypatch.setattr(server, "_stubs", killed_while_counting)
        assert server._models_without_stub(server.loaded()) == {}
    finally:
        server.managed.process.kill()
        server.managed.process.wait()


def test_a_child_seen_before_its_exec_is_counted_once_it_is_a_stub(tmp_path):
    """Triton forks, then execs the stub: a look between the two sees Triton's command line, which is no stub's."""
    from serve.triton.server import TritonServer
    from serve.vectorize.spec import FEATURES

    server = TritonServer(tmp_path, tmp_path / "triton.log", models=[FEATURES])
    script = tmp_path / FEATURES.name / "1" / "model.py"
    script.parent.mkdir(parents=True)
    script.write_text("import time\ntime.sleep(600)\n")
    late = "import os, sys, time; time.sleep(3); os.execv(sys.executable, [sys.executable, os.environ['STUB']])"
    parent = "import subprocess as s, sys, time; s.Popen([sys.executable, '-c', sys.argv[1]]); time.sleep(99)"
    env = {**os.environ, "STUB": str(script)}  # the script is named only after the exec
    server.managed.process = subprocess.Popen([sys.executable, "-c", parent, late], env=env)
    try:
        deadline = time.monotonic() + 30
        while not psutil.Process(server.managed.process.pid).children():
            assert time.monotonic() < deadline, "the child never showed"
            time.sleep(0.05)
        assert server._stubs(listed=True) == {}  # not a stub yet
        while not server._stubs(listed=True).get(FEATURES.name):
            assert time.monotonic() < deadline, "the child, a stub after its exec, was never counted"
            time.sleep(0.1)
    finally:
        for child in psutil.Process(server.managed.process.pid).children():
            child.kill()
        server.managed.process.kill()
        server.managed.process.wait()


def test_one_look_at_triton_s_children_finds_each_model_s_stubs(tmp_path, monkeypatch):
    """A check lists Triton's children once (not once per model) and reads each stub's command line once; between
    listings a stub that dies is seen without one."""
    from serve.triton.server import TritonServer, _stub_model
    from serve.vectorize.spec import FEATURES

    assert _stub_model(["stub", "/repo/sd-copy.unet_lcm/1/model.py", "-x"]) == "sd-copy.unet_lcm"
    assert _stub_model(["python", "-c", "pass"]) is None
    server = TritonServer(tmp_path, tmp_path / "triton.log", models=[FEATURES])
    script = tmp_path / FEATURES.name / "1" / "model.py"
    script.parent.mkdir(parents=True)
    script.write_text("import time\ntime.sleep(600)\n")
    parent = "import subprocess as s, sys, time; [s.Popen([sys.executable, sys.argv[1]]) for _ in 'ab']; time.sleep(99)"
    server.managed.process = subprocess.Popen([sys.executable, "-c", parent, str(script)])
    try:
        deadline = time.monotonic() + 30
        while len(server._stubs(listed=True).get(FEATURES.name, [])) < 2:
            assert time.monotonic() < deadline, "the two stubs never showed"
            time.sleep(0.1)
        assert server._models_without_stub(server.loaded()) == {}  # instance_count 1: two live stubs are enough
        assert set(server._stub_names.values()) == {FEATURES.name}
        listings, children = [], psutil.Process.children
        monkeypatch.setattr(psutil.Process, "children", lambda p, **kw: listings.append(p) or children(p, **kw))
        monkeypatch.setattr(server, "_next_listing", float("inf"))  # no listing is due
        dead = server._stubs()[FEATURES.name][0]
        dead.kill()
        while len(server._stubs().get(FEATURES.name, [])) != 1:
            assert time.monotonic() < deadline, "the killed stub was still counted"
            time.sleep(0.05)
        assert listings == []  # seen dead without listing Triton's children
    finally:
        for child in psutil.Process(server.managed.process.pid).children():
            child.kill()
        server.managed.process.kill()
        server.managed.process.wait()


def test_a_model_parked_while_its_canary_runs_is_not_reloaded(tmp_path, monkeypatch):
    """The residency parks a model (then unloads it) while the canaries run: its failed canary is not a fault."""
    from serve.triton.residency import write_parked
    from serve.triton.server import TritonServer
    from serve.vectorize.spec import FEATURES

    parked = tmp_path / "parked.json"
    server = TritonServer(tmp_path, tmp_path / "triton.log", models=[FEATURES], parked=parked)
    reloads = []
    monkeypatch.setattr(server, "reload", reloads.append)
    monkeypatch.setattr(server, "_models_without_stub", lambda loaded: {})
    monkeypatch.setattr(server, "_next_http_check", float("inf"))

    def unloaded_meanwhile(loaded) -> dict[str, str]:
        write_parked(parked, [FEATURES.name])
        return {FEATURES.name: "canary inference failed: unknown model"}

    monkeypatch.setattr(server, "_models_failing_canary", unloaded_meanwhile)
    assert server.check() is None and reloads == []
    parked.unlink()  # loaded again: the same failure is a fault, and the model is reloaded
    monkeypatch.setattr(server, "_models_failing_canary", lambda loaded: {FEATURES.name: "canary inference failed"})
    server._last_canary = 0.0
    assert server.check() is not None and reloads == [FEATURES.name]


def test_a_model_s_canaries_take_at_most_a_hundredth_of_its_time(tmp_path, monkeypatch):
    """A canary that took 0.05 s is not sent again for 5 s (a CodeFormer's full-size one took 0.75 core every 10 s)."""
    import httpx

    from serve.triton.server import CANARY_SHARE, TritonServer
    from serve.vectorize.spec import FEATURES

    server = TritonServer(tmp_path, tmp_path / "triton.log", models=[FEATURES])
    sent = []

    def infer(url, **kwargs) -> httpx.Response:
        sent.append(url)
        time.sleep(0.05)
        return httpx.Response(200, json={})

    monkeypatch.setattr(server._http, "post", infer)
    monkeypatch.setattr(server, "_answered_since_last_look", lambda name: False)
    monkeypatch.setattr(server, "_stubs", lambda: {})
    assert server._models_failing_canary(server.loaded()) == {} and len(sent) == 1
    assert server._models_failing_canary(server.loaded()) == {} and len(sent) == 1  # not due yet
    due = server._canary_due[FEATURES.name] - time.monotonic()
    assert 0.05 / CANARY_SHARE * 0.9 < due <= 0.2 / CANARY_SHARE
    server._canary_due[FEATURES.name] = 0.0
    assert server._models_failing_canary(server.loaded()) == {} and len(sent) == 2


def test_the_grpc_proxy_answers_unavailable_for_a_call_whose_replica_died_and_leaves_other_statuses():
    import grpc
    from ray.exceptions import ActorDiedError
    from ray.serve._private import proxy

    from serve.processes.ray_worker import replica_deaths_unavailable

    original = proxy.get_grpc_response_status
    try:
        replica_deaths_unavailable()
        replica_deaths_unavailable()  # once per process however often the hook runs
        status_of = proxy.get_grpc_response_status
        died = status_of(ActorDiedError(), None, "r1")
        assert died.code == grpc.StatusCode.UNAVAILABLE and died.is_error and "retry" in died.message
        assert original(ActorDiedError(), None, "r1").code == grpc.StatusCode.INTERNAL  # Ray Serve's own answer
        assert status_of(ValueError("a bug"), None, "r2").code == grpc.StatusCode.INTERNAL  # not a replica's death
        assert status_of(TimeoutError(), 5.0, "r3").code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        proxy.get_grpc_response_status = original


def test_easel_down_stops_a_process_working_for_the_stack_and_the_processes_it_started(tmp_path):
    """`easel models add` builds in its own process: recorded while it builds, it is stopped with the stack."""
    from serve.processes.run_state import StackInfo, stop_recorded, write_state

    stack_id = uuid.uuid4().hex[:12]
    write_state(StackInfo(os.getpid(), 0.0, stack_id), tmp_path)  # a stack recorded, its process gone
    script = (
        "import pathlib, subprocess, sys, time\n"
        "from serve.processes.run_state import working_for_the_stack\n"
        f"with working_for_the_stack('building x', pathlib.Path({str(tmp_path)!r})):\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "    print('building', flush=True)\n"
        "    time.sleep(60)\n"
    )
    helper = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert helper.stdout.readline() == "building\n"
    (child,) = stack_processes(stack_id)  # what it started carries the stack's mark
    stopped = stop_recorded(tmp_path)
    assert stopped.helpers == (f"building x (pid {helper.pid})",) and helper.wait(10) is not None
    psutil.wait_procs([child], timeout=10)
    assert not child.is_running() and list((tmp_path / "helpers").iterdir()) == []
