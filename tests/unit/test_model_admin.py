"""``easel models``: a name is checked with the server's own rule before any call, and URLs quote each path part."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from serve.cli import admin as model_admin
from serve.cli.main import main

HOSTILE = ["../experiments/victim", "a/b", "..", "a?b=1", "a%2Fb", "A", ""]


@pytest.fixture
def calls(monkeypatch) -> list:
    """Every HTTP call ``easel models`` makes (none is sent), a stack found at a made-up address."""
    made = []
    monkeypatch.setattr(model_admin, "stack_api", lambda: "http://127.0.0.1:9")
    monkeypatch.setattr(model_admin.httpx, "request", lambda *args, **kwargs: made.append((args, kwargs)))
    return made


@pytest.mark.parametrize("name", HOSTILE)
def test_remove_refuses_a_name_the_server_would_not_take_before_any_call(calls, name):
    result = CliRunner().invoke(main, ["models", "remove", name])
    assert result.exit_code == 2, result.output
    assert "lower case letters, digits" in result.output and "Traceback" not in result.output
    assert calls == []


@pytest.mark.parametrize("name", HOSTILE)
def test_the_admin_client_refuses_a_bad_name_before_any_call(calls, name, tmp_path):
    for change in (
        lambda: model_admin.remove("http://x", name),
        lambda: model_admin.replace("http://x", name, tmp_path),
    ):
        with pytest.raises(model_admin.ChangeRefused, match="lower case letters"):
            change()
    assert calls == []


def test_path_parts_are_quoted():
    assert model_admin.api_path("v1", "models", "a/b?c%d") == "/v1/models/a%2Fb%3Fc%25d"
    assert model_admin.api_path("v1", "models", "sd-1_5") == "/v1/models/sd-1_5"
