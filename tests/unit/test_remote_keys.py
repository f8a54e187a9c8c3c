"""A remote model's key (``key_env``): read only from a variable the operator declared for remotes' keys
(``easel up --remote-key-envs``, ``EASEL_REMOTE_*`` by default), and its value never shown back.

Refused at ``easel up --remote`` (one line), at ``POST /v1/models`` (a 400 naming ``remote.key_env``), at a start
whose kept model table holds one, and never read when a request draws; a service that echoes its request's
``Authorization`` has it cut from every error quoting it. No server: httpx's recorded answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from types import SimpleNamespace

import click
import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from serve.cli.main import main
from serve.cli.options import NAME_LIST
from serve.errors import BadGateway, InvalidInput, NotReady
from serve.models.served import ServedModels
from serve.models.table import MODEL_TABLE, ModelTable
from serve.protocol.schema import GenerationRequest
from serve.remote.models import RemoteModel
from serve.remote.openai_images import REDACTED, _message
from serve.remote.settings import DEFAULT_KEY_ENVS, RemoteBackend, RemoteSettings, declared_for_remotes
from serve.serving.current_models import CurrentModels
from serve.serving.models import ModelAdmin, NewModel
from serve.settings import DEFAULT_MODEL, StackOptions
from tests.unit.test_remote_answers import answer_of, png

KEY = "sk-remote-secret-0123456789"
URL = "http://127.0.0.1:9"


def test_a_key_env_names_only_a_variable_declared_for_remotes_keys(monkeypatch):
    monkeypatch.setenv("EASEL_REMOTE_B", KEY)
    monkeypatch.setenv("B_KEY", KEY)
    assert DEFAULT_KEY_ENVS == ("EASEL_REMOTE_*",)
    assert RemoteSettings(remotes={"b": {"url": URL, "key_env": "EASEL_REMOTE_B"}}).remote_key_envs == DEFAULT_KEY_ENVS
    for other in ("HOME", "PATH", "B_KEY", "EASEL_REMOTE"):  # EASEL_REMOTE: the prefix is EASEL_REMOTE_
        with pytest.raises(ValidationError) as refused:
            RemoteSettings(remotes={"b": {"url": URL, "key_env": other}})
        said = str(refused.value)
        assert f"--remote b: key_env: {other} is not a variable declared for remotes' keys" in said
        assert "declared: EASEL_REMOTE_*; easel up --remote-key-envs" in said and KEY not in said
        assert os.environ["HOME"] not in said
    declared = RemoteSettings(remote_key_envs=("B_*", "HOME"), remotes={"b": {"url": URL, "key_env": "B_KEY"}})
    assert declared.remotes["b"].api_key(declared.remote_key_envs) == KEY
    with pytest.raises(ValueError, match="EASEL_REMOTE_B is not a variable declared"):  # given: the default is gone
        declared.remotes["b"].model_copy(update={"key_env": "EASEL_REMOTE_B"}).api_key(declared.remote_key_envs)
    assert declared_for_remotes("HOME", ("HOME",)) and not declared_for_remotes("HOMEX", ("HOME",))
    assert declared_for_remotes("EASEL_REMOTE_X", DEFAULT_KEY_ENVS) and not declared_for_remotes("X", ())
    for bad in ("*", "A-B", "1X", "A*B"):
        with pytest.raises(ValidationError, match="neither an environment variable's name nor a prefix"):
            RemoteSettings(remote_key_envs=(bad,))
    assert NAME_LIST.convert(" EASEL_REMOTE_*, B_Key ,", None, None) == ("EASEL_REMOTE_*", "B_Key")  # case kept


def test_easel_up_refuses_an_undeclared_key_env_in_one_line_that_shows_no_value(tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["up", "--remote", f"b={URL},key_env=HOME", "--no-first-request"])
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and error.startswith("Error: remotes: --remote b: key_env: HOME is not a variable")
    assert error.endswith("(declared: EASEL_REMOTE_*; easel up --remote-key-envs)"), result.output  # the whole line
    assert os.environ["HOME"] not in result.output
    assert "--remote-key-envs VAR,PREFIX*,..." in CliRunner().invoke(main, ["up", "--help"]).output


def test_a_start_refuses_a_kept_remote_whose_key_env_is_undeclared_unless_declared_or_named_again(tmp_path):
    """A remote the API added before keys were declared (``key_env=HOME``), kept in the run folder's model table."""
    from serve.cli.stack import _say_model_table

    table = ModelTable.start({DEFAULT_MODEL: "/e/default"})
    table.add_remote("b", {"url": URL, "key_env": "HOME"})
    table.write(tmp_path / MODEL_TABLE)
    with pytest.raises(click.ClickException, match="remote b of the kept model table: key_env: HOME is not"):
        _say_model_table(StackOptions(run_dir=tmp_path))
    _say_model_table(StackOptions(run_dir=tmp_path, remote_key_envs=("HOME",)))  # declared
    _say_model_table(StackOptions(run_dir=tmp_path, remotes={"b": {"url": URL}}))  # the command line's b wins


@pytest.fixture
def admin(engine_dir):
    """The model admin of a stack serving the embedded default, its residency recording the remotes added."""
    added = []

    async def add_remote(name: str, declaration: dict) -> None:
        added.append((name, declaration))

    residency = SimpleNamespace(add_remote=SimpleNamespace(remote=add_remote))
    experiments = SimpleNamespace(exists=lambda name: False)
    models = CurrentModels(ServedModels.open({DEFAULT_MODEL: str(engine_dir)}))
    return ModelAdmin(models, None, residency, experiments), added


def test_post_models_refuses_an_undeclared_or_unset_key_env_with_a_400_naming_it_and_shows_no_value(admin, monkeypatch):
    models, added = admin
    monkeypatch.setenv("EASEL_REMOTE_B", KEY)
    monkeypatch.delenv("EASEL_REMOTE_UNSET", raising=False)
    for key_env, said in (
        ("HOME", "remote.key_env: HOME is not a variable declared for remotes' keys"),
        ("EASEL_REMOTE_UNSET", "remote.key_env: EASEL_REMOTE_UNSET, the variable holding its key, is not set"),
    ):
        body = NewModel(name="far", remote={"url": URL, "key_env": key_env})
        with pytest.raises(InvalidInput) as refused:
            asyncio.run(models.add(body))
        assert refused.value.status == 400 and refused.value.field == "remote.key_env"
        assert said in refused.value.message and os.environ["HOME"] not in refused.value.message
    assert added == []
    entry = asyncio.run(models.add(NewModel(name="far", remote={"url": URL, "key_env": "EASEL_REMOTE_B"})))
    assert added == [("far", {"url": URL, "key_env": "EASEL_REMOTE_B"})]
    assert entry["id"] == "far" and entry["family"] == "remote" and KEY not in str(entry)


def test_a_key_is_never_shown_back_and_an_undeclared_one_is_never_read_nor_sent(monkeypatch, caplog):
    monkeypatch.setenv("EASEL_REMOTE_B", KEY)
    sent = []

    def echoes(status: int):
        def answer(request: httpx.Request) -> httpx.Response:
            sent.append(request.headers.get("Authorization"))
            return httpx.Response(status, json={"error": {"message": f"bad: {request.headers['Authorization']}"}})

        return httpx.MockTransport(answer)

    asked = GenerationRequest(prompt="a fox", size="64x64")
    with caplog.at_level(logging.DEBUG):
        for status, error in ((401, BadGateway), (503, NotReady)):
            model = RemoteModel("far", RemoteBackend(url=URL, key_env="EASEL_REMOTE_B"), transport=echoes(status))
            with pytest.raises(error) as raised:
                asyncio.run(model.generate(asked, 7))
            assert KEY not in raised.value.message and f"bad: Bearer {REDACTED}" in raised.value.message
            assert KEY not in str(model.public())
        assert sent == [f"Bearer {KEY}"] * 2
        for before in ("x" * 185, "\u00e9" * 100):  # cut before it is shortened: no head of the key is left either
            quoted = _message(f"{before} Bearer {KEY} and more".encode(), KEY)
            assert KEY[:6] not in quoted and len(quoted) <= 200
        kept = RemoteModel("kept", RemoteBackend(url=URL, key_env="HOME"), transport=echoes(200))  # an old table's
        with pytest.raises(NotReady) as unreadable:
            asyncio.run(kept.generate(asked, 7))
    assert len(sent) == 2  # nothing sent for it
    assert unreadable.value.status == 503 and unreadable.value.headers() == {}  # no retry mends a setting
    assert "its key is not available to this stack" in unreadable.value.message
    assert KEY not in caplog.text and os.environ["HOME"] not in caplog.text
    assert "model kept: its key cannot be read: key_env: HOME is not a variable declared" in caplog.text
    drawn = RemoteModel(
        "far",
        RemoteBackend(url=URL, key_env="EASEL_REMOTE_B"),
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=answer_of(png(64, 64)))),
    )
    assert len(asyncio.run(drawn.generate(asked, 7)).images) == 1
