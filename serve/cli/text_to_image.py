"""``easel train default``, ``lcm``, ``eval generate``, and the random-weights makers (ControlNet, motion, RIFE)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import click

from build_engines.text_to_image.default_model import MODELS, TRAINED
from serve.cli.options import EXISTING_FOLDER, FOLDER, one_line_errors
from serve.errors import UnsupportedModel
from serve.paths import easel_home
from serve.protocol.schema import SCHEDULER_NAMES
from serve.triton.runtimes import PRECISIONS, RUNTIME_CHOICES

logger = logging.getLogger(__name__)

DEFAULT_OUT = TRAINED["tiny"]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def embedded_option(help_text: str):
    """``--embedded NAME``: one of the embedded models (the first by default)."""
    return click.option("--embedded", type=click.Choice(MODELS), default=MODELS[0], show_default=True, help=help_text)


def model_option(help_text: str):
    """``--model DIR``: a diffusers folder (the trained default model by default)."""
    return click.option(
        "--model", "model_dir", type=EXISTING_FOLDER, default=DEFAULT_OUT, show_default=True, help=help_text
    )


def training_options(stage: str):
    """``--work`` (default ``$EASEL_HOME/train/STAGE``), ``--threads``, ``--quick``: what each training stage takes."""
    work = click.option(
        "--work", type=FOLDER, help=f"Checkpoints (resumed from when present). Default: $EASEL_HOME/train/{stage}."
    )
    threads = click.option("--threads", type=int, default=1, show_default=True, help="torch threads.")
    quick = click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny steps; not a useful model).")
    return lambda command: work(threads(quick(command)))


def training_run(stage: str, work: Path | None, recipe, quick: bool, **overrides):
    """A stage's checkpoint folder and settings: ``recipe``'s quick or committed ones, with the overrides given."""
    work = work or easel_home() / "train" / (f"{stage}-quick" if quick else stage)
    settings = recipe.quick() if quick else recipe()
    given = {name: value for name, value in overrides.items() if value is not None}
    return work, dataclasses.replace(settings, **given)


@click.command("default")
@click.option(
    "--out", type=FOLDER, default=DEFAULT_OUT, show_default=True, help="Where the diffusers model is written."
)
@training_options("default")
@click.option("--unet-steps", type=int, default=None, help="Stop stage 2 here (default: the committed recipe's).")
def train_default(out: Path, work: Path | None, threads: int, unet_steps: int | None, quick: bool) -> None:
    """Train the embedded default model (VAE, then text encoder + UNet) on coloured icons; resumable."""
    import shutil

    from build_engines.text_to_image.train_default import TrainSettings, train

    work, settings = training_run("default", work, TrainSettings, quick, unet_steps=unet_steps)
    shutil.rmtree(out, ignore_errors=True)
    train(out, work, settings, threads)
    click.echo(f"model: {out}\ncheckpoints: {work}")


@click.command("lcm")
@model_option("The teacher (a diffusers folder); the student is written into its unet_lcm/ folder.")
@training_options("lcm")
@click.option("--steps", type=int, default=None, help="Distillation steps (default: the committed recipe's).")
def train_lcm(model_dir: Path, work: Path | None, threads: int, steps: int | None, quick: bool) -> None:
    """Distil the default's UNet into a 4-step latent consistency model (served by the lcm and tcd schedulers)."""
    from build_engines.text_to_image.train_lcm import DistilSettings, train

    work, settings = training_run("lcm", work, DistilSettings, quick, steps=steps)
    click.echo(f"student: {train(model_dir, work, settings, threads)}\ncheckpoints: {work}")


@click.command("generate")
@model_option("Model folder to evaluate.")
@click.option("--out", type=FOLDER, default=DOCS, show_default=True)
@click.option("--seeds", type=int, default=4, show_default=True, help="Images per held-out pairing.")
@click.option("--steps", type=int, default=20, show_default=True)
@click.option(
    "--scheduler",
    type=click.Choice(SCHEDULER_NAMES),
    default="ddim",
    show_default=True,
    help="lcm and tcd: the model's distilled UNet where its folder ships one (unet_lcm/).",
)
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="onnxruntime", show_default=True)
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True)
def eval_generate(model_dir: Path, out: Path, seeds: int, steps: int, scheduler: str, runtime: str, precision: str):
    """Colour accuracy and recognisability over colour x icon pairings held out of training.

    With another runtime or precision than ONNX Runtime fp32: also PSNR and SSIM to its images.
    """
    from build_engines.text_to_image.evaluate import GenerateSettings, evaluate, table
    from serve.triton.runtimes import UnknownChoice, check_choice

    with one_line_errors(UnknownChoice):
        check_choice(runtime, precision)
    settings = GenerateSettings(seeds=seeds, steps=steps, scheduler=scheduler)
    report = evaluate(model_dir, out, settings, runtime, precision)
    click.echo(table(report))
    click.echo(f"written: {out / 'generate_eval.json'}, {out / 'generate_eval.md'}, {out / 'generate_eval.png'}")


@click.command("random-controlnet")
@click.argument("model_dir", type=EXISTING_FOLDER)
@click.argument("out_dir", type=FOLDER)
@click.option("--seed", default=0, show_default=True)
def random_controlnet(model_dir: Path, out_dir: Path, seed: int) -> None:
    """Create a ControlNet with random weights for MODEL_DIR's UNet in OUT_DIR (diffusers' ControlNetModel format).

    Serve it with `easel up --model MODEL_DIR --controlnet NAME=OUT_DIR`: it steers images; it knows no edges.
    """
    from build_engines.text_to_image.random_controls import make_controlnet

    with one_line_errors(UnsupportedModel):
        click.echo(f"created {make_controlnet(model_dir, out_dir, seed=seed)}")


@click.command("random-motion-adapter")
@click.argument("model_dir", type=EXISTING_FOLDER)
@click.argument("out_dir", type=FOLDER)
@click.option("--seed", default=0, show_default=True)
def random_motion_adapter(model_dir: Path, out_dir: Path, seed: int) -> None:
    """Create an AnimateDiff MotionAdapter with random weights for MODEL_DIR's UNet in OUT_DIR (diffusers' format).

    Serve it with `easel up --model MODEL_DIR --motion-adapter NAME=OUT_DIR`: its frames move; it knows no motion.
    """
    from build_engines.text_to_image.motion import random_motion_adapter as make

    click.echo(f"created {make(model_dir, out_dir, seed=seed)}")


@click.command("random-flownet")
@click.argument("out_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
def random_flownet(out_file: Path, seed: int) -> None:
    """Create a RIFE flownet.pkl with random weights in Practical-RIFE v4.25's layout at OUT_FILE.

    Serve it with `easel up --interpolator NAME=OUT_FILE`: it draws frames between frames; it knows no motion.
    """
    from build_engines.finishing.ifnet import random_flownet as make

    click.echo(f"created {make(out_file, seed=seed)}")
