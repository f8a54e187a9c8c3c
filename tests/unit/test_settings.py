"""`easel up`'s options are StackOptions' fields; the Serve app's arguments share them."""

import subprocess
import sys

import click
import pytest

from serve.cli.fields import cli_fields, model_values
from serve.cli.options import PORTS, SIZE
from serve.cli.stack import up
from serve.gateway import AppArgs
from serve.paths import PROJECT_ROOT
from serve.processes.ports import GRPC_PORT, TRITON_PORTS
from serve.settings import AppSettings, StackOptions
from serve.stores import default_url


def _up_options(*args: str) -> StackOptions:
    params = dict(up.make_context("up", list(args)).params)
    for how_it_runs in ("detach", "detach_timeout", "stack_id", "first_request"):
        params.pop(how_it_runs)
    return StackOptions(**model_values(StackOptions, params))


def test_every_setting_is_an_option_of_easel_up_with_its_description_or_marked_as_no_option():
    options = {p.name: p for p in up.params if isinstance(p, click.Option)}
    on_cli = cli_fields(StackOptions)
    assert {"run_dir", "dashboard", "scrape_interval_s", "canary_interval_s"} == set(StackOptions.model_fields) - set(
        on_cli
    )
    for name in on_cli:
        assert options[name].help == StackOptions.model_fields[name].description, name
    assert set(options) == {
        *on_cli,
        "no_cache",
        "no_image_store",
        "jobs",
        "detach",
        "detach_timeout",
        "stack_id",
        "first_request",
    }


def test_the_serve_app_s_arguments_restate_no_shared_setting():
    assert set(AppArgs.__annotations__).isdisjoint(AppSettings.model_fields)
    for name in AppSettings.model_fields:
        assert AppArgs.model_fields[name].description == StackOptions.model_fields[name].description


def test_existing_command_lines_keep_their_meaning(tmp_path):
    default = _up_options()
    library = StackOptions()
    assert default.triton_ports == TRITON_PORTS and default.grpc_port == GRPC_PORT  # the library takes free ones
    assert library.triton_ports == (0, 0, 0) and library.grpc_port == 0
    assert default.model_dump(exclude={"triton_ports", "grpc_port", "run_dir"}) == library.model_dump(
        exclude={"triton_ports", "grpc_port", "run_dir"}
    )
    conftest_line = ["--port", "8123", "--dashboard-port", "8124", "--repository", str(tmp_path), "--grpc-port", "0"]
    options = _up_options(*conftest_line, "--triton-ports", "0,0,0", "--model", str(tmp_path), "--no-cache")
    assert (options.port, options.dashboard_port, options.repository) == (8123, 8124, tmp_path)
    assert (options.triton_ports, options.grpc_port, options.model_dir, options.cache_bytes) == (
        (0, 0, 0),
        0,
        tmp_path,
        0,
    )
    assert _up_options("--jobs", "redis://h:6379/0").store_url == "redis://h:6379/0"  # the old spelling, hidden
    assert _up_options("--store", "redis://h:6379/1").store_url == "redis://h:6379/1"
    sized = _up_options("--memory-budget", "8GiB", "--cache-bytes", "512MiB", "--max-cost", "12")
    assert (sized.memory_budget_bytes, sized.cache_bytes, sized.max_cost) == (8 << 30, 512 << 20, 12.0)
    assert "--jobs" not in up.get_help(click.Context(up))


def test_sizes_and_port_lists_parse_and_read_back():
    assert [SIZE.convert(s, None, None) for s in ("8GiB", "512MiB", "2G", "1500000000")] == [
        8 << 30,
        512 << 20,
        2_000_000_000,
        1_500_000_000,
    ]
    assert SIZE.show(1 << 30) == "1GiB" and SIZE.show(1_500_000_000) == "1500000000"
    for bad in ("lots", "0", "-1G"):
        with pytest.raises(click.BadParameter):
            SIZE.convert(bad, None, None)
    assert PORTS.convert("0,0,0", None, None) == (0, 0, 0) and PORTS.show(TRITON_PORTS) == "8003,8001,8002"
    for bad in ("1,2", "1,x,3", "1,2,70000"):
        with pytest.raises(click.BadParameter):
            PORTS.convert(bad, None, None)


def test_the_store_defaults_to_the_run_folder_s_file(tmp_path):
    assert StackOptions(run_dir=tmp_path).store == default_url(tmp_path)
    assert AppArgs(models={"m": "e"}, triton_grpc_url="t").store == default_url()
    assert AppArgs(models={"m": "e"}, triton_grpc_url="t", store_url="redis://r:1/0").store == "redis://r:1/0"


def test_easel_help_imports_neither_torch_nor_ray():
    code = "import sys; from serve.cli.main import main; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_controlnets_are_repeated_name_equals_folder_options(tmp_path):
    (tmp_path / "edges").mkdir()
    (tmp_path / "depth").mkdir()
    options = _up_options("--controlnet", f"edges={tmp_path / 'edges'}", "--controlnet", f"depth={tmp_path / 'depth'}")
    assert options.controlnets == {"easel-default": {"edges": tmp_path / "edges", "depth": tmp_path / "depth"}}
    assert _up_options().controlnets == {}
    for bad in (["edges"], [f"Edges={tmp_path}"], [f"edges={tmp_path / 'none'}"], [f"a={tmp_path}", f"a={tmp_path}"]):
        with pytest.raises(click.BadParameter):
            _up_options(*[arg for value in bad for arg in ("--controlnet", value)])


def test_every_app_setting_easel_up_takes_reaches_the_serve_app():
    from serve.stack import app_settings

    options = StackOptions(
        guidance_cutoff=0.5, approximate_cache=0.25, approximate_similarity=0.9, max_cost=9.0, model_weights_bytes=45
    )
    given = app_settings(options, memory_budget_bytes=123, port=8123)
    assert set(given) == set(AppSettings.model_fields) | {
        "url_secret_path",
        "webhook_secret_path",
        "audit_folder",
    }  # its run folder's
    args = AppArgs(models={"easel-default": "engines"}, triton_grpc_url="this-node", **given)
    assert (args.guidance_cutoff, args.approximate_cache, args.approximate_similarity, args.max_cost) == (
        0.5,
        0.25,
        0.9,
        9.0,
    )
    assert args.memory_budget_bytes == 123 and args.model_weights_bytes == 45 and args.store_url == options.store
    assert args.image_store == str(options.run_dir / "images") and args.public_url == "http://127.0.0.1:8123"


def test_adapters_are_declared_per_model_and_the_old_spellings_mean_the_default_model(tmp_path):
    for folder in ("sd", "xl", "loras", "loras-xl", "face", "edges"):
        (tmp_path / folder).mkdir()
    models = ["--model", f"sd={tmp_path / 'sd'}", "--model", f"xl={tmp_path / 'xl'}"]
    options = _up_options(
        *models,
        *("--loras", str(tmp_path / "loras"), "--loras", f"xl={tmp_path / 'loras-xl'}"),
        *("--ip-adapter", f"face={tmp_path / 'face'}", "--ip-adapter", f"xl:face={tmp_path / 'face'}"),
        *("--ip-adapter", f"xl:{tmp_path / 'edges'}", "--controlnet", f"xl:edges={tmp_path / 'edges'}"),
    )
    assert options.loras_dir == {"sd": tmp_path / "loras", "xl": tmp_path / "loras-xl"}
    assert options.ip_adapters == {
        "sd": {"face": tmp_path / "face"},
        "xl": {"face": tmp_path / "face", "edges": tmp_path / "edges"},
    }
    assert options.controlnets == {"xl": {"edges": tmp_path / "edges"}}
    alone = _up_options("--loras", str(tmp_path / "loras"), "--ip-adapter", str(tmp_path / "face"))
    assert alone.loras_dir == {"easel-default": tmp_path / "loras"}
    assert alone.ip_adapters == {"easel-default": {"face": tmp_path / "face"}}
    library = StackOptions(models={"sd": tmp_path / "sd"}, loras_dir=tmp_path / "loras", ip_adapters={"ip": tmp_path})
    assert library.loras_dir == {"sd": tmp_path / "loras"} and library.ip_adapters == {"sd": {"ip": tmp_path}}
    refused = {
        "no model 'xl' is served": ["--controlnet", f"xl:edges={tmp_path / 'edges'}"],
        "two folders for the default model": [*models[:2], "--loras", str(tmp_path), "--loras", f"sd={tmp_path}"],
        "face given twice": [*models[:2], "--ip-adapter", f"face={tmp_path}", "--ip-adapter", f"sd:face={tmp_path}"],
    }
    for message, line in refused.items():
        with pytest.raises(ValueError, match=message):
            _up_options(*line)
    for bad in (["--loras", f"xl={tmp_path / 'none'}"], ["--loras", str(tmp_path), "--loras", str(tmp_path)]):
        with pytest.raises(click.BadParameter):
            _up_options(*bad)


def test_the_stack_builds_each_model_with_its_own_adapters(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from build_engines.text_to_image import build as build_module
    from build_engines.text_to_image.adapters import AdapterBuild
    from serve.stack import StartPlan

    for folder in ("sd", "xl", "loras", "face", "edges"):
        (tmp_path / folder).mkdir()
    built = {}

    def build(model_dir, repository, prefix="", **how):
        built[prefix] = how
        return SimpleNamespace(path=tmp_path / f"engines-{prefix}")

    monkeypatch.setattr(build_module, "build", build)
    options = StackOptions(
        models={"sd": tmp_path / "sd", "xl": tmp_path / "xl"},
        run_dir=tmp_path / "run",
        loras_dir={"xl": tmp_path / "loras"},
        ip_adapters={"xl:face": tmp_path / "face"},
        controlnets={"edges": tmp_path / "edges"},
        step_cache=True,
    )
    assert StartPlan(options).models() == {"sd": str(tmp_path / "engines-"), "xl": str(tmp_path / "engines-xl.")}
    assert built[""]["adapters"] == AdapterBuild() and built[""]["controlnets"] == {"edges": tmp_path / "edges"}
    assert built["xl."]["adapters"] == AdapterBuild(lora=True, ip_adapters={"face": tmp_path / "face"})
    assert built["xl."]["controlnets"] == {} and built[""]["step_cache"] and "step_cache" not in built["xl."]
