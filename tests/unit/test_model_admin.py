"""``easel models``: a name is checked with the server's own rule before any call, and URLs quote each path part."""

from __future__ import annotations

from types import SimpleNamespace

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


def test_add_remote_sends_the_declaration_and_fallback_sends_the_chain_in_order(monkeypatch):
    """``easel models add-remote NAME=URL,...`` and ``easel models fallback MODEL LINK...``: what each sends."""
    sent = []

    def answered(method, url, json=None, **_):
        sent.append((method, url, json))
        entry = {"id": "b", "family": "remote", "version": 1, "loaded": True, "fallback": json.get("chain", [])}
        return SimpleNamespace(status_code=200, json=lambda: entry)

    monkeypatch.setattr(model_admin, "stack_api", lambda: "http://127.0.0.1:9")
    monkeypatch.setattr(model_admin.httpx, "request", answered)
    added = CliRunner().invoke(main, ["models", "add-remote", "b=http://127.0.0.1:8100,key_env=B_KEY,timeout_s=30"])
    chained = CliRunner().invoke(main, ["models", "fallback", "b", "sd", "far"])
    cleared = CliRunner().invoke(main, ["models", "fallback", "b"])
    assert (added.exit_code, chained.exit_code, cleared.exit_code) == (0, 0, 0), added.output + chained.output
    remote = {"url": "http://127.0.0.1:8100", "key_env": "B_KEY", "timeout_s": "30"}
    assert sent == [
        ("POST", "http://127.0.0.1:9/v1/models", {"name": "b", "remote": remote}),
        ("PUT", "http://127.0.0.1:9/v1/models/b/fallback", {"chain": ["sd", "far"]}),
        ("PUT", "http://127.0.0.1:9/v1/models/b/fallback", {"chain": []}),
    ]
    assert "b: fallback sd, far" in chained.output and "b: fallback (none)" in cleared.output
