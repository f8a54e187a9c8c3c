"""``easel``: build engines and change the running stack's models; every other group lives beside its code.

Parses and wires only. ``easel up`` and ``down`` are :mod:`serve.cli.stack`; ``easel models`` is here because it
builds, which only an entry point may.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import click

from build_engines.text_to_image.published import PUBLISHED
from serve.cli import admin as model_admin
from serve.cli.backup import backup, restore
from serve.cli.bench import bench
from serve.cli.contract import contract
from serve.cli.dashboards import dashboards
from serve.cli.fields import mapping_of_pairs, model_options
from serve.cli.keys import keys
from serve.cli.options import (
    EXISTING_FOLDER,
    FOLDER,
    MODEL_OPTION,
    NAMED_FOLDER,
    NAMED_REMOTE,
    ModelFolder,
    ModelName,
    check_model,
    one_line_errors,
)
from serve.cli.stack import down, status, up
from serve.cli.text_to_image import (
    embedded_option,
    eval_generate,
    random_controlnet,
    random_flownet,
    random_motion_adapter,
    train_default,
    train_lcm,
)
from serve.cli.tools import chaos, loadtest, soak
from serve.cli.vectorize import eval_vectorize, train_vectorize
from serve.cli.webhooks import webhooks
from serve.errors import UnsupportedModel
from serve.settings import StackOptions
from serve.triton.spec import Backend

logger = logging.getLogger("easel")


ELSEWHERE = [
    up,
    down,
    status,
    backup,
    restore,
    keys,
    webhooks,
    model_admin.loras,
    model_admin.vectorize,
    dashboards,
    bench,
    loadtest,
    chaos,
    soak,
    contract,
]
"""The command groups that live beside their code (the stack's, the admin routes', the tools')."""


@click.group(commands=[*ELSEWHERE, random_controlnet, random_motion_adapter, random_flownet])
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Easel: text-to-image and vectorize serving on Triton Inference Server and Ray Serve."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@main.group(commands=[train_vectorize, train_default, train_lcm])
def train() -> None:
    """Train models (their small outputs are committed)."""


@main.group("eval", commands=[eval_vectorize, eval_generate])
def evaluate() -> None:
    """Evaluate models over a folder of data."""


@main.command()
@MODEL_OPTION
@model_options(StackOptions, "repository", "runtime", "precision", "vae_decoder_dir")
@embedded_option("Which embedded model to build when --model is not given.")
@click.option(
    "--backend",
    type=click.Choice([b.value for b in Backend]),
    default=Backend.PYTHON_ONNX.value,
    show_default=True,
    help="python: ONNX Runtime inside Triton's python backend (bundled CPU Triton); "
    "onnxruntime: native backend configs for the NGC Triton container; tensorrt: fp16 TensorRT plans for it (needs "
    "the gpu extra and an NVIDIA GPU).",
)
@click.option("--force", is_flag=True, help="Rebuild even when cached engines exist.")
def build(model_dir: Path | None, repository: Path | None, embedded: str, backend: str, force: bool, **how) -> None:
    """Export a diffusers model to parity-checked ONNX engines and install them in the model repository.

    Each engine's runtime, precision and error against fp32 are printed.
    """
    from build_engines.tensorrt import TENSORRT_MISSING, tensorrt_available
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.vectorize.repository import install_vectorize
    from serve.paths import live_repository
    from serve.stack.build_plan import ModelBuild
    from serve.triton.runtimes import UnknownChoice

    repository = repository or live_repository()

    check_model(model_dir)
    if backend == Backend.TENSORRT and not tensorrt_available():
        raise click.ClickException(TENSORRT_MISSING)
    plan = ModelBuild(
        model_dir or default_model_dir(embedded),
        runtime=how["runtime"],
        precision=how["precision"],
        extras={"vae_decoder": how["vae_decoder_dir"]},
    )
    with one_line_errors(UnknownChoice):
        engines = plan.build(repository, force=force, backend=Backend(backend))
    install_vectorize(repository, backend=Backend(backend))
    click.echo(engines.runtimes_table())
    click.echo(f"engines: {engines.path}\nrepository: {repository}")


@main.command("random-model")
@click.argument("name", type=click.Choice(PUBLISHED))
@click.argument("out_dir", type=FOLDER)
@click.option("--without-t5", is_flag=True, help="sd3: leave T5 out, as diffusers allows (text_encoder_3=None).")
def random_model(name: str, out_dir: Path, without_t5: bool) -> None:
    """Create a full-size published architecture with random weights in OUT_DIR.

    sd15: SD 1.5, sdxl: SDXL base 1.0, sd3: SD3 medium, flux: FLUX.1 dev. Its configs are committed in
    build_engines/text_to_image/published/; the CLIP tokenizers are CLIP's real BPE.
    """
    from build_engines.text_to_image.published import create_random_model

    try:
        click.echo(f"created {create_random_model(name, out_dir, without_t5=without_t5)}")
    except ValueError as error:
        raise click.UsageError(str(error)) from error


# -- easel models: build here, then the running stack's admin routes (serve.cli.admin) ---------------------------


def built_engines(
    model_dir: Path, ip_adapters: dict | None = None, controlnets: dict | None = None, lora: bool = False
) -> Path:
    """``model_dir``'s engine folder, built (or found in the engine cache) and measured, not installed.

    ``ip_adapters``, ``controlnets``: NAME -> folder, built into the engines (as ``easel up`` builds a model's own);
    ``lora``: LoRA-ready engines.
    """
    from serve.stack.build_plan import ModelBuild

    plan = ModelBuild(model_dir, lora=lora, ip_adapters=dict(ip_adapters or {}), controlnets=dict(controlnets or {}))
    with one_line_errors(UnsupportedModel):
        return plan.build(repository=None).path


def _said(model: dict) -> str:
    state = "loaded" if model["loaded"] else "loads on its first request"
    return f"{model['id']}: {model['family']}, version {model['version']}, {state}"


@main.group()
def models() -> None:
    """The running stack's models: list, add, replace, remove (a request finishes on the version it began on)."""


@models.command("list")
def models_list() -> None:
    """The models the running stack serves (the default first)."""
    for model in model_admin.call(model_admin.stack_api(), "GET", "/v1/models")["data"]:
        click.echo(_said(model))


def _model_and_adapters(function):
    """The model argument (NAME=DIR) and its adapters (``--loras``, ``--ip-adapter``, ``--controlnet``)."""
    adapters = [
        click.option(
            "--loras",
            type=EXISTING_FOLDER,
            metavar="DIR",
            help="A folder of LoRA files (NAME.safetensors): LoRA-ready engines, these LoRAs served for this model, "
            "and uploads for it (POST /v1/loras with model=NAME).",
        ),
        click.option(
            "--controlnet",
            "controlnets",
            type=NAMED_FOLDER,
            metavar="NAME=DIR",
            multiple=True,
            callback=mapping_of_pairs,
            help="A diffusers ControlNetModel folder, served as this model's ControlNet NAME (repeatable).",
        ),
        click.option(
            "--ip-adapter",
            "ip_adapters",
            type=ModelFolder(()),
            metavar="[NAME=]DIR",
            multiple=True,
            callback=mapping_of_pairs,
            help="An IP-Adapter folder (weights and image_encoder/), served as this model's IP-Adapter NAME "
            "(repeatable).",
        ),
        click.argument("model", type=ModelFolder(()), metavar="NAME=DIR"),
    ]
    for decorate in adapters:
        function = decorate(function)
    return function


def _built_and_sent(change: Callable, model: tuple[str, Path], loras: Path | None, **adapters) -> str:
    """Build the engines of ``model`` (NAME, DIR) with ``adapters``, send them to the stack as ``change``.

    ``loras``: a LoRA folder, prepared here for the LoRA-ready engines into the model's registry folder.
    """
    from build_engines.text_to_image.loras import model_registry
    from serve.processes.run_state import working_for_the_stack

    name, model_dir = model
    api_url = model_admin.stack_api()  # first: with no stack up, nothing is built
    with working_for_the_stack(f"easel models: building {model_dir}"):  # `easel down` stops it with the stack
        engine_dir = built_engines(model_dir, lora=loras is not None, **adapters)
        registry = model_registry(loras, engine_dir, model_dir, name) if loras is not None else None
    return _said(change(api_url, name, engine_dir, registry))


@models.command("add")
@_model_and_adapters
def models_add(model: tuple[str, Path], loras: Path | None, ip_adapters: dict, controlnets: dict) -> None:
    """Build DIR's engines (with its LoRAs, IP-Adapters and ControlNets) and serve them as a new model NAME.

    DIR alone: named after its folder.
    """
    added = _built_and_sent(model_admin.add, model, loras, ip_adapters=ip_adapters, controlnets=controlnets)
    click.echo(f"added {added}")


@models.command("add-remote")
@click.argument("remote", type=NAMED_REMOTE, metavar="NAME=URL[,OPTION=VALUE...]")
def models_add_remote(remote: tuple[str, dict]) -> None:
    """Serve a model another service draws (OpenAI's images API) as NAME, with the options ``easel up --remote`` takes.

    Its key_env names a variable of the running stack's environment that ``easel up --remote-key-envs`` declared for
    remotes' keys (EASEL_REMOTE_* by default); the key itself never travels.
    """
    name, declaration = remote
    added = model_admin.add_remote(model_admin.stack_api(), name, declaration)
    click.echo(f"added {_said(added)}")


@models.command("fallback")
@click.argument("model", type=ModelName())
@click.argument("links", type=ModelName(), nargs=-1)
def models_fallback(model: str, links: tuple[str, ...]) -> None:
    """Set MODEL's fallback chain: the LINKS that answer, in turn, when it cannot serve (no LINKS: no chain)."""
    chained = model_admin.chain(model_admin.stack_api(), model, links)
    click.echo(f"{chained['id']}: fallback {', '.join(chained['fallback']) or '(none)'}")


@models.command("replace")
@_model_and_adapters
def models_replace(model: tuple[str, Path], loras: Path | None, ip_adapters: dict, controlnets: dict) -> None:
    """Build DIR's engines and serve them as model NAME's next version; the old one finishes what it started.

    With ``--loras``, its uploaded LoRAs are prepared again for the new engines; without, it takes no LoRAs.
    """
    replaced = _built_and_sent(model_admin.replace, model, loras, ip_adapters=ip_adapters, controlnets=controlnets)
    click.echo(f"replaced {replaced}")


@models.command("remove")
@click.argument("name", type=ModelName())
def models_remove(name: str) -> None:
    """Stop serving model NAME: its requests in flight finish; its background jobs not started fail naming it."""
    removed = model_admin.remove(model_admin.stack_api(), name)
    click.echo(f"removed {removed['id']} (version {removed['version']} unloads once its requests have ended)")


if __name__ == "__main__":
    main()
