"""The models a stack serves: their names on the command line, the one door from a request's `model`, Triton names."""

import json
import shutil
from pathlib import Path

import click
import pytest

from build_engines.text_to_image.build import install
from serve.cli.fields import model_options, model_values
from serve.errors import Conflict, EaselError, InvalidInput, NotFound
from serve.models.served import ServedModels
from serve.models.table import MODEL_TABLE, ModelTable, start_said
from serve.protocol.schema import GenerationRequest
from serve.settings import DEFAULT_MODEL, StackOptions
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.activations import ANY_ENGINE
from serve.triton.spec import read_model_config
from tests.controls import b64, edges_image


def _parse(*values: str) -> dict:
    command = click.command()(lambda models: models)
    return model_options(StackOptions, "models")(command).main(
        [arg for value in values for arg in ("--model", value)], standalone_mode=False
    )


def test_a_model_is_named_by_its_flag_its_folder_or_as_the_embedded_default(tmp_path):
    folder = tmp_path / "Tiny-XL"
    folder.mkdir()
    assert _parse(f"xl={folder}", str(folder), DEFAULT_MODEL) == {"xl": folder, "tiny-xl": folder, DEFAULT_MODEL: None}
    assert StackOptions().served == {DEFAULT_MODEL: None} and StackOptions().model_dir is None
    assert StackOptions(models={"a": folder, "b": None}).model_dir == folder  # the first is the default


@pytest.mark.parametrize(
    ("value", "says"),
    [("Bad=.", "is not NAME=DIR"), ("a=/no/such/folder", "is not a folder"), ("x.y", "is not a folder")],
)
def test_a_name_that_cannot_name_a_model_is_refused_on_the_command_line(value, says):
    with pytest.raises(click.BadParameter, match=says):
        _parse(value)


def test_a_folder_whose_name_cannot_name_a_model_asks_for_a_name(tmp_path):
    folder = tmp_path / "my model"
    folder.mkdir()
    with pytest.raises(click.BadParameter, match="give NAME="):
        _parse(str(folder))
    with pytest.raises(click.BadParameter, match="more than once"):
        _parse(f"a={folder}", f"a={folder}")


@pytest.fixture(scope="module")
def models(engine_dir):
    return ServedModels.open({DEFAULT_MODEL: str(engine_dir), "second": str(engine_dir)}, max_cost=64)


def test_the_one_door_resolves_a_request_s_model_and_refuses_an_unknown_one_naming_model(models):
    assert models.resolve(None) is models.resolve("") is models[DEFAULT_MODEL] is models.default
    assert models.resolve("second").name == "second"
    with pytest.raises(InvalidInput) as refused:
        models.resolve("gpt-image-1")
    assert refused.value.field == "model" and "served: easel-default, second" in refused.value.message
    with pytest.raises(NotFound):
        models.require("gpt-image-1")
    with pytest.raises(ValueError, match="cannot name a model"):
        ServedModels.open({"Not A Name": "x"})


def test_the_default_model_s_engines_keep_their_names_and_another_s_carry_its_own(models):
    default, second = models[DEFAULT_MODEL], models["second"]
    assert {spec.name for spec in default.triton_specs()} == set(default.folder.specs)
    assert {spec.name for spec in second.triton_specs()} == {f"second.{engine}" for engine in second.folder.specs}
    assert second.key == default.key and second.limits == default.limits  # one folder served twice: one cache key
    listed = second.public(loaded=False)
    assert (listed["id"], listed["object"], listed["family"], listed["loaded"]) == ("second", "model", "sd", False)


def test_what_a_model_does_not_take_is_refused_naming_the_field(models):
    second = models["second"]
    with pytest.raises(InvalidInput) as refused:
        second.check(GenerationRequest(prompt="x", loras=[{"name": "style"}]))
    assert refused.value.field == "loras.0.name"
    request = GenerationRequest(prompt="x", controlnets=[{"name": "edges", "image": b64(edges_image(64))}])
    with pytest.raises(InvalidInput) as refused:
        second.check(request)
    assert refused.value.field == "controlnets.0.name"
    with pytest.raises(InvalidInput, match="--step-cache") as refused:  # its folder has no step-cache engines
        second.check(GenerationRequest(prompt="x", cache_interval=2))
    assert refused.value.field == "cache_interval"
    with pytest.raises(InvalidInput) as refused:  # over --max-cost, found before any replica runs it
        second.check(GenerationRequest(prompt="x", size="1024x1024", num_inference_steps=100))
    assert refused.value.field == "num_inference_steps"


def test_two_models_install_side_by_side_in_one_repository(engine_dir, tmp_path):
    folder = EngineFolder(engine_dir)
    install(folder, tmp_path, prefix="")
    install(folder, tmp_path, prefix="second.")
    for engine in folder.specs:
        assert read_model_config(tmp_path / engine / "config.pbtxt").name == engine
        assert read_model_config(tmp_path / f"second.{engine}" / "config.pbtxt").name == f"second.{engine}"
        assert Path(tmp_path / f"second.{engine}" / "1").is_dir()
    pool = folder.pool(1 << 30, "second.")
    assert set(pool.engines) == {f"second.{engine}" for engine in folder.memory_models}


def test_easel_up_takes_several_models_pins_and_a_room_for_their_weights(tmp_path):
    command = click.command()(model_options(StackOptions)(lambda **values: values))
    argv = ["--model", DEFAULT_MODEL, "--model", f"x={tmp_path}", "--pin", "x", "--model-weights", "512MiB"]
    options = StackOptions(**model_values(StackOptions, command.main(argv, standalone_mode=False)))
    assert (options.served, options.pin, options.model_weights_bytes) == (
        {DEFAULT_MODEL: None, "x": tmp_path},
        ("x",),
        512 << 20,
    )


def test_a_table_gives_each_name_new_versions_never_reused_and_keeps_old_ones_until_dropped():
    table = ModelTable.start({DEFAULT_MODEL: "/e/default", "sd": "/e/sd"})
    assert [entry.version_id for entry in table.entries()] == [f"{DEFAULT_MODEL}.v1", "sd.v1"]
    added = table.add("xl", "/e/xl")
    assert (added.version, list(table.current)) == (1, [DEFAULT_MODEL, "sd", "xl"])
    new, old = table.replace("sd", "/e/sd-2")
    assert (new.version_id, old.version_id, list(table.current)) == ("sd.v2", "sd.v1", [DEFAULT_MODEL, "sd", "xl"])
    assert table.retired == {"sd.v1": old}  # still finishing its requests
    removed = table.remove("xl")
    assert removed.version_id == "xl.v1" and "xl" not in table.current and "xl.v1" in table.retired
    table.drop("sd.v1")
    table.drop("xl.v1")
    assert table.add("xl", "/e/xl").version == 2  # a name removed and added again: a new version, never xl.v1
    again = ModelTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table


def test_a_table_holds_remote_models_and_chains_each_checked_and_the_command_line_wins_for_what_it_names():
    """Remote models and fallback chains live in the table beside the models (the API's kept across a start)."""
    table = ModelTable.start({DEFAULT_MODEL: "/e/default", "sd": "/e/sd"})
    table.add_remote("far", {"url": "http://127.0.0.1:9"})
    for taken in (DEFAULT_MODEL, "far"):
        with pytest.raises(Conflict) as refused:
            table.add_remote(taken, {"url": "http://127.0.0.1:8"})
        assert refused.value.field == "name"
    with pytest.raises(Conflict):
        table.add("far", "/e/far")  # a served model may not take a remote's name either
    table.chain(DEFAULT_MODEL, ("sd", "far"))
    twice, itself, unknown = ((DEFAULT_MODEL, DEFAULT_MODEL), "named twice"), (("sd",), "itself"), (("x",), "no model")
    for links, why in (twice, itself, unknown):
        with pytest.raises(InvalidInput, match=why) as refused:
            table.chain("sd", links)
        assert refused.value.field == "chain"
    with pytest.raises(NotFound):
        table.chain("nope", ("sd",))
    again = ModelTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table and again.fallbacks == {DEFAULT_MODEL: ("sd", "far")}
    assert table.remove("far") is None and "far" not in table.remotes  # a remote: nothing to retire
    table.chain(DEFAULT_MODEL, ())
    assert table.fallbacks == {}
    api = ModelTable.start({"a": "/e/a"})
    api.add_remote("kept", {"url": "http://127.0.0.1:7"})
    api.add_remote("b", {"url": "http://127.0.0.1:7"})
    api.chain("a", ("kept",))
    started = ModelTable.resumed(api, {"a": "/e/a"}).declared({"b": {"url": "http://127.0.0.1:6"}}, {})
    assert started.remotes == {"kept": {"url": "http://127.0.0.1:7"}, "b": {"url": "http://127.0.0.1:6"}}
    assert started.fallbacks == {"a": ("kept",)}
    assert started.declared({}, {"a": ("b",)}).fallbacks == {"a": ("b",)}  # the command line's chain wins
    with pytest.raises(ValueError, match="served model's name"):
        started.declared({"a": {"url": "http://127.0.0.1:6"}}, {})


def test_up_refuses_a_remote_named_as_a_model_the_kept_table_serves_in_one_line_before_any_build(tmp_path):
    """A model the API added in the last run, then ``easel up --remote`` under its name: one line, nothing started."""
    from serve.cli.stack import _say_model_table

    table = ModelTable.start({DEFAULT_MODEL: "/e/default"})
    table.add("b", "/e/b")
    table.write(tmp_path / MODEL_TABLE)
    with pytest.raises(click.ClickException, match="'b' is a served model's name"):
        _say_model_table(StackOptions(run_dir=tmp_path, remotes={"b": {"url": "http://127.0.0.1:9"}}))
    _say_model_table(StackOptions(run_dir=tmp_path, remotes={"c": {"url": "http://127.0.0.1:9"}}))  # another name


def test_a_start_resumes_the_table_the_api_left_and_the_command_line_seeds_only_what_it_never_served():
    left = ModelTable.start({"a": "/e/a1", "b": "/e/b1", "gone": "/e/g1"})
    left.add("added", "/e/added")
    left.replace("b", "/e/b2")
    left.remove("gone")
    resumed = ModelTable.resumed(left, {"a": "/e/a-rebuilt", "gone": "/e/g1", "new": "/e/n1"})
    assert [(e.name, e.engine_dir, e.version) for e in resumed.current.values()] == [
        ("a", "/e/a-rebuilt", 1),  # version 1 follows this start's build
        ("b", "/e/b2", 2),  # the API's replacement stays
        ("added", "/e/added", 1),  # the API's addition stays
        ("new", "/e/n1", 1),  # on the command line, never served: added
    ]  # "gone" was removed through the API: it stays removed
    assert resumed.retired == {} and resumed.versions["b"] == 2
    assert ModelTable.resumed(None, {"a": "/e/a1"}).to_json() == ModelTable.start({"a": "/e/a1"}).to_json()


def test_a_command_line_that_names_models_wins_for_what_it_names_and_says_so():
    """`easel up`; `easel down`; `easel up --model small=DIR`: small is the default, the embedded model stays."""
    left = ModelTable.start({"easel-default": "/e/default"})
    resumed = ModelTable.resumed(left, {"small": "/e/small"}, named=True)
    assert [(e.name, e.engine_dir, e.version) for e in resumed.current.values()] == [
        ("small", "/e/small", 1),  # the command line's first: the default
        ("easel-default", "/e/default", 1),  # kept from the last run
    ]
    assert ModelTable.start_default(left, ["small"], named=True) == "small"  # its Triton models keep bare names
    said = start_said(left, ["small"], named=True)
    assert "small is the default now (it was easel-default)" in said and "kept from the last run: easel-default" in said
    assert "--reset-models" in said and "\n" not in said
    # What the API replaced or removed gives way to the build of a model the command line names.
    api = ModelTable.start({"a": "/e/a1", "b": "/e/b1", "gone": "/e/g1"})
    api.replace("b", "/e/b2")
    api.remove("gone")
    again = ModelTable.resumed(api, {"a": "/e/a1", "b": "/e/b-built", "gone": "/e/g-built"}, named=True)
    assert [(e.name, e.engine_dir, e.version) for e in again.current.values()] == [
        ("a", "/e/a1", 1),
        ("b", "/e/b-built", 3),
        ("gone", "/e/g-built", 2),
    ]
    assert start_said(api, ["a", "b", "gone"], named=True).startswith(
        "models: the command line wins for the models it names: b serves this build as version 3 (was version 2); "
        "gone added"
    )
    # A command line that names none (plain `easel up`) serves the kept table: its default, and nothing said.
    assert ModelTable.start_default(resumed, ["easel-default"], named=False) == "small"
    assert start_said(resumed, ["easel-default"], named=False) is None
    assert start_said(None, ["small"], named=True) is None  # a new table: nothing to say


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (lambda t: t.add("sd", "/e/x"), 409, "name"),
        (lambda t: t.add("Not A Name", "/e/x"), None, None),
        (lambda t: t.replace("nope", "/e/x"), 404, "model_id"),
        (lambda t: t.remove("nope"), 404, "model_id"),
        (lambda t: t.remove(DEFAULT_MODEL), 409, "model_id"),  # requests without `model` need it
    ],
)
def test_a_change_the_table_cannot_take_is_refused_naming_the_field_and_changes_nothing(change, status, field):
    table = ModelTable.start({DEFAULT_MODEL: "/e/default", "sd": "/e/sd"})
    before = table.copy()
    with pytest.raises((EaselError, ValueError)) as refused:
        change(table)
    if status is not None:
        assert (refused.value.status, refused.value.field) == (status, field)
    assert table == before


def test_the_table_file_is_written_whole_and_every_reader_sees_the_change_by_one_stat(engine_dir, tmp_path):
    path = tmp_path / MODEL_TABLE
    start = {DEFAULT_MODEL: str(engine_dir)}
    ModelTable.start(start).write(path)
    reader = ServedModels.open(start, max_cost=64, table_path=path)
    assert reader.refreshed() is reader  # unchanged: the same models, nothing read
    table = reader.table.copy()
    table.add("second", str(engine_dir))
    table.replace(DEFAULT_MODEL, str(engine_dir))
    table.write(path)
    assert [p.name for p in tmp_path.iterdir()] == [MODEL_TABLE]
    now = reader.refreshed()
    assert list(now) == [DEFAULT_MODEL, "second"] and now.refreshed() is now
    assert (now.resolve(None).version, now.resolve(None).prefix) == (2, f"{DEFAULT_MODEL}.v2.")
    old = now.version(f"{DEFAULT_MODEL}.v1")  # the old version still resolves by id: its requests finish on it
    assert (old.prefix, old.triton_name("unet")) == ("", "unet")
    assert now["second"].triton_name("unet") == "second.unet"
    assert now.activation_bytes == reader.activation_bytes  # the pool is the stack's, whatever is added
    assert now.room_bytes == 3 * reader.room_bytes  # no room set: every version's weights fit
    assert {f"{DEFAULT_MODEL}.v2.unet", "unet", "second.unet", ANY_ENGINE} <= set(now.pool().engines)
    again = ServedModels.open(start, max_cost=64, table_path=path)  # a replica started later reads the table
    assert [m.version_id for m in again.versions()] == [m.version_id for m in now.versions()]


def test_a_removed_model_is_a_400_that_says_so(engine_dir):
    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir), "second": str(engine_dir)}, max_cost=64)
    table = models.table.copy()
    table.remove("second")
    with pytest.raises(InvalidInput) as refused:
        models.with_table(table).resolve("second")
    assert refused.value.field == "model" and "was removed from this stack" in refused.value.message
    with pytest.raises(InvalidInput, match="no version 'second.v9'"):
        models.version("second.v9")


def test_each_model_has_its_own_adapters_and_a_version_added_since_its_folder_s(engine_dir):
    from serve.adapters.requests import StackAdapters

    started = StackAdapters("/run/loras-second", True, "sqlite:///easel.db", "second")
    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir), "second": str(engine_dir)}, {"second": started})
    assert models["second"].adapters == started and models["second"].public(True)["loras"] is True
    assert models[DEFAULT_MODEL].adapters == StackAdapters(None, False, "sqlite:///easel.db", DEFAULT_MODEL)
    table = models.table.copy()
    table.replace("second", str(engine_dir))
    table.add("third", str(engine_dir))
    changed = models.with_table(table)
    for name in ("second", "third"):  # no LoRA registry of their own; the IP-Adapter their engine folder has
        assert changed[name].adapters == StackAdapters(None, False, "sqlite:///easel.db", name)
    with pytest.raises(InvalidInput, match="third takes no LoRA adapters") as refused:
        changed["third"].lora_target()
    assert refused.value.field == "model"


def test_a_model_added_with_loras_serves_its_registry_folder_links_it_and_keeps_it_in_the_table(
    default_model, engine_dir, tmp_path, monkeypatch
):
    """`easel models add --loras DIR`: the registry folder prepared by the client, served and installed by the stack."""
    from build_engines.text_to_image import loras as loras_module
    from build_engines.text_to_image.adapters import AdapterBuild
    from build_engines.text_to_image.build import build
    from build_engines.text_to_image.random_adapters import make_lora
    from serve.adapters import requests as requests_module
    from serve.adapters.requests import StackAdapters
    from serve.serving.models import NewModel

    monkeypatch.setattr(loras_module, "run_dir", lambda: tmp_path / "run")
    lora_engines = build(default_model, repository=None, adapters=AdapterBuild(lora=True)).path
    make_lora(default_model, tmp_path / "loras" / "house.safetensors", rank=2, seed=1)
    folder = loras_module.model_registry(tmp_path / "loras", lora_engines, default_model, "added")
    assert folder == tmp_path / "run" / "loras-added"
    body = NewModel(name="added", engine_dir=str(lora_engines), loras_dir=str(folder))
    store = StackAdapters(None, False, f"sqlite:///{tmp_path / 'easel.db'}", DEFAULT_MODEL)
    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir)}, {DEFAULT_MODEL: store}, max_cost=64)
    table = models.table.copy()
    table.add(body.name, body.engine_dir, body.loras_dir)
    requests_module._STORES.clear()
    try:
        added = models.with_table(ModelTable.from_json(json.loads(json.dumps(table.to_json()))))["added"]
        assert added.adapters.loras_dir == str(folder) and added.lora_target().folder == folder
        house = added.adapters.registry().get("house")
        assert house.status == "ready" and house.model == "added" and house.rank == 2
    finally:
        for opened in requests_module._STORES.values():
            opened.close()
        requests_module._STORES.clear()
    added.install(tmp_path / "repository")
    for engine in added.folder.specs:
        link = tmp_path / "repository" / f"added.{engine}" / "1" / "loras"
        assert link.exists() == (engine in added.folder.lora_slots()), engine
    assert (tmp_path / "repository" / "added.unet" / "1" / "loras").resolve() == folder.resolve()
    replaced = table.copy()
    replaced.replace("added", str(lora_engines))  # no --loras: the next version takes none
    with pytest.raises(InvalidInput, match="added takes no LoRA adapters"):
        models.with_table(replaced)["added"].lora_target()


@pytest.mark.parametrize(
    "engines, loras_dir, says",
    [("plain", "registry", "not LoRA-ready"), ("lora", "relative/loras", "not an absolute path to a LoRA registry")],
)
def test_a_loras_dir_that_cannot_be_served_is_refused_naming_loras_dir(
    engines, loras_dir, says, default_model, engine_dir, tmp_path
):
    from build_engines.text_to_image.adapters import AdapterBuild
    from build_engines.text_to_image.build import build
    from build_engines.text_to_image.loras import save_registry
    from serve.adapters.registry import LoraRegistry

    save_registry(LoraRegistry({}), tmp_path / "registry")
    folder = engine_dir if engines == "plain" else build(default_model, None, adapters=AdapterBuild(lora=True)).path
    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir)}, max_cost=64)
    table = models.table.copy()
    table.add("added", str(folder), str(tmp_path / loras_dir) if loras_dir == "registry" else loras_dir)
    with pytest.raises(InvalidInput, match=says) as refused:
        models.with_table(table)
    assert refused.value.field == "loras_dir"


def test_a_folder_that_cannot_be_served_is_refused_naming_engine_dir(engine_dir, tmp_path):
    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir)}, max_cost=64)
    unmeasured = tmp_path / "unmeasured"
    shutil.copytree(engine_dir, unmeasured, symlinks=True)
    (unmeasured / "unet" / "memory.json").unlink()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for folder, says in [
        ("engines", "not an absolute path"),
        (str(tmp_path / "missing"), "not an absolute path to a folder"),
        (str(unfinished), "holds no finished build"),
        (str(unmeasured), "engines not measured"),
    ]:
        table = models.table.copy()
        table.add("new", folder)
        with pytest.raises(InvalidInput, match=says) as refused:
            models.with_table(table)
        assert refused.value.field == "engine_dir"


def test_a_running_stack_installs_a_built_version_under_its_own_names_and_removes_it(engine_dir, tmp_path):
    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir)}, max_cost=64)
    table = models.table.copy()
    table.replace(DEFAULT_MODEL, str(engine_dir))
    new = models.with_table(table).resolve(None)
    new.install(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{DEFAULT_MODEL}.v2.{e}" for e in new.folder.specs)
    config = read_model_config(tmp_path / f"{DEFAULT_MODEL}.v2.unet" / "config.pbtxt")
    assert config.name == f"{DEFAULT_MODEL}.v2.unet"
    assert (tmp_path / f"{DEFAULT_MODEL}.v2.unet" / "1" / "memory.json").is_symlink()
    new.uninstall(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_easel_models_says_in_one_line_that_no_stack_runs_or_that_a_folder_is_no_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from serve.cli.admin import ChangeRefused
    from serve.cli.main import built_engines, main

    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    for argv in (["add", f"x={tmp_path}"], ["replace", f"x={tmp_path}"], ["remove", "x"], ["list"]):
        result = CliRunner().invoke(main, ["models", *argv])
        assert result.exit_code == 1
        assert result.output.strip() == "Error: no stack is running (start one with `easel up`)"
    with pytest.raises(click.ClickException) as refused:
        built_engines(tmp_path)  # no model_index.json: not a diffusers pipeline, nothing built
    assert "\n" not in refused.value.message and not isinstance(refused.value, ChangeRefused)


def test_easel_models_add_builds_the_model_with_its_own_ip_adapters_and_controlnets(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from serve.cli import main as cli

    for folder in ("model", "face", "edges"):
        (tmp_path / folder).mkdir()
    built, sent = [], []
    monkeypatch.setattr(cli.model_admin, "stack_api", lambda: "http://127.0.0.1:1")
    monkeypatch.setattr(cli, "built_engines", lambda model_dir, **adapters: built.append(adapters) or tmp_path)
    answer = {"id": "xl", "family": "sdxl", "version": 1, "loaded": True}
    monkeypatch.setattr(cli.model_admin, "add", lambda url, name, engine_dir, loras_dir: sent.append(name) or answer)
    argv = ["models", "add", "--ip-adapter", f"face={tmp_path / 'face'}", "--controlnet", f"edges={tmp_path / 'edges'}"]
    result = CliRunner().invoke(cli.main, [*argv, f"xl={tmp_path / 'model'}"])
    assert result.exit_code == 0, result.output
    expected = {"ip_adapters": {"face": tmp_path / "face"}, "controlnets": {"edges": tmp_path / "edges"}}
    assert built == [expected | {"lora": False}]
    assert sent == ["xl"] and result.output.startswith("added xl: sdxl")


def test_easel_models_add_with_loras_builds_lora_ready_engines_and_sends_their_registry_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from build_engines.text_to_image import loras as loras_module
    from serve.cli import main as cli

    for folder in ("model", "loras"):
        (tmp_path / folder).mkdir()
    built, prepared, sent = [], [], []
    monkeypatch.setattr(cli.model_admin, "stack_api", lambda: "http://127.0.0.1:1")
    monkeypatch.setattr(cli, "built_engines", lambda model_dir, **adapters: built.append(adapters) or tmp_path)
    prepare = lambda *given: prepared.append(given) or tmp_path / "run" / "loras-xl"  # noqa: E731
    monkeypatch.setattr(loras_module, "model_registry", prepare)
    answer = {"id": "xl", "family": "sdxl", "version": 2, "loaded": True}
    monkeypatch.setattr(cli.model_admin, "replace", lambda *call: sent.append(call) or answer)
    argv = ["models", "replace", "--loras", str(tmp_path / "loras"), f"xl={tmp_path / 'model'}"]
    result = CliRunner().invoke(cli.main, argv)
    assert result.exit_code == 0, result.output
    assert built == [{"lora": True, "ip_adapters": {}, "controlnets": {}}]
    assert prepared == [(tmp_path / "loras", tmp_path, tmp_path / "model", "xl")]
    assert sent == [("http://127.0.0.1:1", "xl", tmp_path, tmp_path / "run" / "loras-xl")]


def test_a_model_on_the_torch_runtime_has_a_loop_model_inside_triton_unless_the_stack_says_replica(
    default_model, engine_dir
):
    from build_engines.text_to_image.build import build

    torch_dir = str(build(default_model, None, runtime="torch", precision="fp32", device="cpu").path)
    for loop, onnx_loop, torch_loop in (("auto", False, True), ("triton", True, True), ("replica", False, False)):
        onnx_model = ServedModels.open({DEFAULT_MODEL: str(engine_dir)}, loop=loop).default
        torch_model = ServedModels.open({DEFAULT_MODEL: torch_dir}, loop=loop).default
        assert (onnx_model.loop, torch_model.loop) == (onnx_loop, torch_loop), loop
    model = ServedModels.open({DEFAULT_MODEL: torch_dir, "b": torch_dir}).resolve("b")
    assert model.loop_model == "b.text_to_image_loop" == model.triton_names()[-1]  # loaded, unloaded, watched with it


def test_a_model_added_while_a_gpu_stack_runs_installs_on_the_gpu_as_the_start_did(
    default_model, tmp_path, monkeypatch
):
    """``ServedModel.install`` (the API's add and replace, the kept table at a restart) gives each engine its device."""
    from build_engines.text_to_image.build import build
    from serve.triton import runtimes

    torch_dir = str(build(default_model, None, runtime="torch", precision="fp32", device="cpu").path)
    monkeypatch.setattr(runtimes, "gpu_present", lambda: True)  # as on a GPU machine: no GPU is used here
    model = ServedModels.open({DEFAULT_MODEL: torch_dir}).default
    model.install(tmp_path)
    kinds = {
        name: read_model_config(tmp_path / name / "config.pbtxt").instance_group[0].kind
        for name in model.triton_names()
    }
    assert set(kinds) == {*model.folder.specs, "text_to_image_loop"} and set(kinds.values()) == {1}, kinds  # KIND_GPU
    monkeypatch.setattr(runtimes, "gpu_present", lambda: False)
    model.install(tmp_path)
    assert read_model_config(tmp_path / "unet" / "config.pbtxt").instance_group[0].kind == 2  # KIND_CPU
