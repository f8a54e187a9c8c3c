"""The Ray head's GCS kept (serve/processes/gcs.py), on a plain listening process standing in for it (no servers)."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from serve.processes import Supervisor, free_port, gcs
from serve.processes.gcs import KeptGcs, external_storage, keep, storage_env
from tests.unit.test_processes import _wait

# Listens on the port its --port flag names (0: the first argument's), as Ray's GCS does with its --gcs_server_port
# (named otherwise here: a command line naming Ray's server is refused in unit tests).
FAKE_GCS = (
    "import socket, sys, time\n"
    "flag = next(a for a in sys.argv if a.startswith('--port='))\n"
    "port = int(flag.split('=')[1]) or int(sys.argv[1])\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', port)); s.listen(); time.sleep(600)\n"
)


def test_the_gcs_state_goes_to_the_store_s_redis_or_to_rocksdb_in_the_run_folder(tmp_path):
    redis = storage_env("redis://127.0.0.1:6380/2", tmp_path, "stack1", 7000)
    assert redis == {
        "RAY_REDIS_ADDRESS": "127.0.0.1:6380",
        "RAY_external_storage_namespace": "stack1",
        "RAY_GCS_SERVER_PORT": "7000",
    }
    rocksdb = storage_env(f"sqlite:///{tmp_path}/easel.db", tmp_path, "stack1", 7000)
    assert rocksdb["RAY_gcs_storage"] == "rocksdb" and rocksdb["RAY_gcs_storage_path"] == str(tmp_path / "gcs")
    assert external_storage(redis) == "redis 127.0.0.1:6380" and external_storage(rocksdb).startswith("rocksdb")
    assert external_storage({}) is None  # in memory: not worth restarting


@pytest.mark.parametrize("owned", [True, False], ids=["the-stack-s", "a-cluster-s"])
def test_a_killed_gcs_is_started_again_on_its_port_with_its_environment_and_only_an_owned_one_is_stopped(
    tmp_path, owned, monkeypatch
):
    monkeypatch.setattr(gcs, "PORT_FLAG", "--port=")
    port = free_port()
    env = {**os.environ, "RAY_gcs_storage": "rocksdb", "RAY_gcs_storage_path": str(tmp_path)}
    first = subprocess.Popen([sys.executable, "-c", FAKE_GCS, str(port), "--port=0"], env=env)
    _wait(lambda: _listens(first.pid, port))
    kept = KeptGcs(psutil.Process(first.pid), f"127.0.0.1:{port}", tmp_path / "gcs.log", owned=owned)
    assert kept.storage == f"rocksdb {tmp_path}" and kept.running() and not kept.restarted
    supervisor = Supervisor()
    supervisor.watch(kept)
    os.kill(first.pid, signal.SIGKILL)
    # Listening, not only started: until then the pid may still be setpriv exec'ing it (environ read mid-exec: {})
    _wait(lambda: kept.restarted and kept.running() and _listens(kept.pid, port))
    again = psutil.Process(kept.pid)
    assert f"--port={port}" in again.cmdline()  # pinned: raylets find it where the old one was
    assert again.environ()["RAY_gcs_storage_path"] == str(tmp_path)
    assert not psutil.pid_exists(first.pid)  # the dead one reaped (no zombie left)
    supervisor.stop(grace_s=5)
    if owned:
        assert not again.is_running() or again.status() == psutil.STATUS_ZOMBIE
    else:  # a cluster's GCS outlives the stack
        assert again.is_running()
        again.kill()
        again.wait(10)


def _listens(pid: int, port: int) -> bool:
    try:
        return any(c.laddr.port == port for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.Error:
        return False


def test_a_gcs_not_on_this_machine_is_not_kept(tmp_path):
    assert keep(f"127.0.0.1:{free_port()}", tmp_path / "gcs.log", owned=True) is None
