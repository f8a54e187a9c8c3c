"""Unit tests touch no server: any attempt to start Ray, Triton, Prometheus or Redis fails the test."""

from __future__ import annotations

import subprocess

import pytest

SERVERS = ("tritonserver", "raylet", "gcs_server", "prometheus", "redis-server")


class ServerStartForbidden(RuntimeError):
    """A unit test tried to start a server."""


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch):
    import ray

    real_popen_init = subprocess.Popen.__init__

    def guarded_popen_init(self, args, *rest, **kwargs):
        words = [args] if isinstance(args, str | bytes) else [str(a) for a in args]
        if any(server in word for word in words for server in SERVERS):
            raise ServerStartForbidden(f"unit tests may not start servers: {words[:3]}")
        real_popen_init(self, args, *rest, **kwargs)

    def forbidden_ray_init(*args, **kwargs):
        raise ServerStartForbidden("unit tests may not start Ray (ray.init)")

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen_init)
    monkeypatch.setattr(ray, "init", forbidden_ray_init)
