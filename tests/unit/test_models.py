"""The models a stack serves: their names on the command line, the one door from a request's `model`, Triton names."""

from pathlib import Path

import click
import pytest

from build_engines.text_to_image.build import install
from serve.cli_options import model_options, model_values
from serve.errors import InvalidInput, NotFound
from serve.settings import DEFAULT_MODEL, StackOptions
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.models import ServedModels
from serve.text_to_image.schema import GenerationRequest
from serve.triton.spec import read_model_config


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
    request = GenerationRequest(prompt="x", controlnets=[{"name": "edges", "image": "aGk="}])
    with pytest.raises(InvalidInput) as refused:
        second.check(request)
    assert refused.value.field == "controlnets.0.name"


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
