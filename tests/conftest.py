"""Shared fixtures: the embedded model and its engines, built once per test session into the Easel cache."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch

from loadtests.benchmarks.tiles import psnr
from serve.paths import PROJECT_ROOT
from serve.stack import RAY_ENV

__all__ = ["psnr"]  # tests compare images with the benchmarks' measure

# Ray reads these when first imported (test modules import it while being collected): set them first, as
# `easel up` does, so the stacks the tests start run Ray as it does (on loopback, single-machine mode).
for _name, _value in RAY_ENV.items():
    os.environ.setdefault(_name, _value)


SECOND_WORKER = (
    "tests/integration/xl_stack/",
    "tests/integration/test_cli.py",
    "tests/integration/test_contract.py",
    "tests/integration/test_face_id_plus.py",
    "tests/integration/test_gpu_bench_video.py",
    "tests/integration/test_gpu_pack.py",
    "tests/integration/test_image_input.py",
    "tests/integration/test_jobs.py",
    "tests/integration/test_loop_in_triton.py",
    "tests/integration/test_many_models.py",
    "tests/integration/test_stable_video.py",
    "tests/integration/test_text_to_image_transformers.py",
)
"""Integration tests, each with its own stack and killing only its own processes, that the second worker runs after
the unit tests. Chosen by ``--durations`` so that each worker has about half the suite's time
(docs/guides/development.md, "Tests")."""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Split the suite between two pytest-xdist workers, each running its share in order.

    pyproject's addopts run the suite on two workers (``-n 2 --dist loadgroup``): the first runs the integration tests
    (the stacks a package shares start once), the second the unit tests and then :data:`SECOND_WORKER`'s modules.
    """

    def second(item: pytest.Item) -> bool:
        return item.path.relative_to(PROJECT_ROOT).as_posix().startswith(SECOND_WORKER)

    def unit(item: pytest.Item) -> bool:
        return "integration" not in item.path.relative_to(PROJECT_ROOT).parts

    items.sort(key=second)  # stable: the moved modules last, after the unit tests, each in its order
    for item in items:
        item.add_marker(pytest.mark.xdist_group("second" if unit(item) or second(item) else "first"))


def git_status() -> str | None:
    """``git status --porcelain`` of the checkout the tests run from (None: not a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


@pytest.fixture(scope="session", autouse=True)
def _the_checkout_is_never_written():
    """The tests leave ``git status --porcelain`` as they found it: nothing they run writes the checkout.

    Compared before and after, so a developer's own uncommitted edits do not count (a line only after the tests is a
    change they made); on a clean clone (CI) it must stay empty.
    """
    before = git_status()
    yield
    after = git_status()
    if before is not None and after is not None:
        new = sorted(set(after.splitlines()) - set(before.splitlines()))  # what was committed meanwhile went: no fault
        assert new == [], f"the tests changed the checkout (git status --porcelain): {new}"


@pytest.fixture(scope="session")
def default_model():
    """The embedded tiny diffusers model folder."""
    from build_engines.text_to_image.build import default_model_dir

    return default_model_dir("tiny")


@pytest.fixture(scope="session")
def engine_dir(default_model, tmp_path_factory):
    """Engines of the embedded model (cached), installed into a throw-away repository."""
    from build_engines.text_to_image.build import build

    return build(default_model, repository=tmp_path_factory.mktemp("repository")).path


@pytest.fixture(scope="session")
def openvino_engine_dir(default_model, engine_dir, tmp_path_factory):
    """The embedded model's engines on OpenVINO (its ONNX graphs, already exported for ``engine_dir``, converted)."""
    from build_engines.text_to_image.build import build

    return build(default_model, repository=None, runtime="openvino").path


@pytest.fixture(scope="session")
def diffusers_pipeline(default_model):
    """diffusers' own StableDiffusionPipeline over the same weights: the reference for parity."""
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    pipeline = StableDiffusionPipeline.from_pretrained(default_model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_xl_model():
    """The embedded tiny SDXL diffusers model folder."""
    from build_engines.text_to_image.build import default_model_dir

    return default_model_dir("tiny-xl")


@pytest.fixture(scope="session")
def tiny_xl_engine_dir(tiny_xl_model, tmp_path_factory):
    """Engines of the tiny SDXL (cached), installed into a throw-away repository."""
    from build_engines.text_to_image.build import build

    return build(tiny_xl_model, repository=tmp_path_factory.mktemp("repository-xl")).path


@pytest.fixture(scope="session")
def diffusers_xl_pipeline(tiny_xl_model):
    """diffusers' own StableDiffusionXLPipeline over the tiny SDXL's weights (no watermark): the parity reference."""
    from diffusers import StableDiffusionXLPipeline

    torch.set_num_threads(1)
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_xl_model, add_watermarker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


TRANSFORMER_MODELS = ("tiny-sd3", "tiny-flux", "tiny-flux-schnell")
"""The embedded flow-matching transformer models (SD3, Flux dev-like, Flux schnell-like)."""


@pytest.fixture(scope="session")
def transformer_models():
    """Each embedded transformer model's diffusers folder, by name."""
    from build_engines.text_to_image.build import default_model_dir

    return {name: default_model_dir(name) for name in TRANSFORMER_MODELS}


@pytest.fixture(scope="session")
def transformer_engine_dirs(transformer_models, tmp_path_factory):
    """Engines of each embedded transformer model (cached), installed into throw-away repositories."""
    from build_engines.text_to_image.build import build

    return {
        name: build(model, repository=tmp_path_factory.mktemp(f"repository-{name}")).path
        for name, model in transformer_models.items()
    }


def diffusers_reference(model_dir, **components):
    """diffusers' own pipeline of ``model_dir``'s class over its weights (``components`` as given): the reference."""
    import diffusers

    from serve.text_to_image.families.folder import read_model_index

    torch.set_num_threads(1)
    pipeline = getattr(diffusers, read_model_index(model_dir)["_class_name"]).from_pretrained(model_dir, **components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def reference_images(pipeline, scheduler: str, samplers=None, **kwargs) -> np.ndarray:
    """uint8 NHWC images from diffusers for ``kwargs`` (prompt, seed, steps, size...).

    ``scheduler`` is looked up in ``samplers`` (the served family's table; default: SD's and SDXL's).

    An empty ``negative_prompt`` is passed as None: Easel's "no negative prompt", which SDXL's pipeline turns into
    zeros (``force_zeros_for_empty_prompt``) and SD's encodes as "".
    """
    from serve.text_to_image.samplers import NOISE_SAMPLERS

    pipeline.scheduler = (samplers or NOISE_SAMPLERS)[scheduler].build(pipeline.scheduler.config)
    seed = kwargs.pop("seed")
    kwargs["negative_prompt"] = kwargs.get("negative_prompt") or None
    images = pipeline(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
    return (images * 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def controlnet_dirs(default_model, tiny_xl_model, tmp_path_factory):
    """Random ControlNets made here in diffusers' format: two for the tiny SD, two for the tiny SDXL."""
    from tests.controls import make_controlnets

    return make_controlnets(default_model, tiny_xl_model, tmp_path_factory.mktemp("controlnets"))


@pytest.fixture(scope="session")
def control_engine_dir(default_model, controlnet_dirs, tmp_path_factory):
    """The tiny SD's engines with its two ControlNets (``edges``, ``depth``) and an SDXL one (``xl``: refused)."""
    from build_engines.text_to_image.build import build

    repository = tmp_path_factory.mktemp("repository-controlnets")
    return build(default_model, repository=repository, controlnets=controlnet_dirs.for_sd).path


@pytest.fixture(scope="session")
def xl_control_engine_dir(tiny_xl_model, controlnet_dirs, tmp_path_factory):
    """The tiny SDXL's engines with its two ControlNets (``edges``, ``depth``) and an SD one (``sd``: refused)."""
    from build_engines.text_to_image.build import build

    repository = tmp_path_factory.mktemp("repository-xl-controlnets")
    return build(tiny_xl_model, repository=repository, controlnets=controlnet_dirs.for_sdxl).path


@pytest.fixture(scope="session")
def inpaint_model():
    """The tiny SD as an inpainting checkpoint (a 9-channel UNet), made here."""
    from build_engines.text_to_image.build import default_model_dir

    return default_model_dir("tiny-inpaint")


@pytest.fixture(scope="session")
def xl_inpaint_model():
    """The tiny SDXL as an inpainting checkpoint (a 9-channel UNet), made here."""
    from build_engines.text_to_image.build import default_model_dir

    return default_model_dir("tiny-xl-inpaint")
