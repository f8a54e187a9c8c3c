"""The package's stack (see ``__init__``) and the adapters it serves."""

import pytest

from build_engines.faces.random_pack import random_face_pack
from build_engines.text_to_image.random_adapters import make_faceid_adapter, make_instantid, make_ip_adapter, make_lora
from serve.names import DEFAULT_MODEL
from serve.stack import Stack, StackOptions
from tests.adapters import make_adapters

XL = "xl"
"""The tiny-xl's name: the stack's default model (a request without ``model`` is its)."""


@pytest.fixture(scope="package")
def adapters(tiny_xl_model, tmp_path_factory):
    """The tiny-xl's LoRAs and IP-Adapter ``ip``."""
    return make_adapters(tiny_xl_model, tmp_path_factory.mktemp("adapters-xl"))


@pytest.fixture(scope="package")
def face_adapter(tiny_xl_model, tmp_path_factory):
    """A second IP-Adapter of the tiny-xl, served beside the first as ``face``."""
    return make_ip_adapter(tiny_xl_model, tmp_path_factory.mktemp("face-xl"), seed=6)


@pytest.fixture(scope="package")
def faceid(tiny_xl_model, tmp_path_factory):
    """A random IP-Adapter FaceID of the tiny-xl (h94's layout), served as ``faceid``."""
    return make_faceid_adapter(tiny_xl_model, tmp_path_factory.mktemp("faceid-xl"), seed=9, rank=4)


@pytest.fixture(scope="package")
def instantid(tiny_xl_model, tmp_path_factory):
    """A random InstantID of the tiny-xl (InstantX's layout), served as ``instantid``."""
    return make_instantid(tiny_xl_model, tmp_path_factory.mktemp("instantid-xl"), seed=11)


@pytest.fixture(scope="package")
def default_loras(default_model, tmp_path_factory):
    """The embedded SD's own LoRA folder: one SD LoRA, ``sd-style``."""
    folder = tmp_path_factory.mktemp("loras-sd")
    make_lora(default_model, folder / "sd-style.safetensors", rank=2, seed=7)
    return folder


@pytest.fixture(scope="package")
def stack(
    tiny_xl_model,
    adapters,
    face_adapter,
    faceid,
    instantid,
    default_loras,
    controlnet_dirs,
    inpaint_model,
    xl_inpaint_model,
    tmp_path_factory,
):
    """``xl`` (default) with LoRAs, two IP-Adapters, a FaceID, an InstantID and the ControlNets ``edges`` and
    ``depth`` (and ``sd``, made for SD: refused); the embedded SD with a LoRA; the inpainting checkpoints ``sd`` and
    ``sdxl``; face models. No result cache: tests send the same seeded requests alone and together."""
    options = StackOptions(
        port=0,
        dashboard=False,
        models={XL: tiny_xl_model, DEFAULT_MODEL: None, "sd": inpaint_model, "sdxl": xl_inpaint_model},
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        loras_dir={XL: adapters.loras, DEFAULT_MODEL: default_loras},  # --loras xl=DIR --loras easel-default=DIR
        ip_adapters={
            f"{XL}:ip": adapters.ip_adapter,
            f"{XL}:face": face_adapter,
            f"{XL}:faceid": faceid,
            f"{XL}:instantid": instantid,
        },
        faces=random_face_pack(tmp_path_factory.mktemp("faces") / "buffalo_l"),
        controlnets={f"{XL}:{name}": folder for name, folder in controlnet_dirs.for_sdxl.items()},
    )
    with Stack(options) as stack:
        yield stack
