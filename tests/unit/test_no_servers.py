"""The unit tests' guard (tests/unit/conftest.py) refuses to start servers."""

import pytest

from serve.processes import ManagedProcess
from tests.unit.conftest import ServerStartForbidden


def test_starting_triton_from_a_unit_test_fails(tmp_path):
    from serve.triton.server import TritonServer

    with pytest.raises(ServerStartForbidden):
        TritonServer(tmp_path, tmp_path / "triton.log").start(timeout_s=5)


def test_starting_ray_from_a_unit_test_fails():
    import ray

    with pytest.raises(ServerStartForbidden):
        ray.init()


def test_any_server_binary_is_refused(tmp_path):
    process = ManagedProcess("redis", lambda: ["redis-server", "--port", "0"], tmp_path / "log", lambda: True)
    with pytest.raises(ServerStartForbidden):
        process.start(timeout_s=1)
