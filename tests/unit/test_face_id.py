"""IP-Adapter FaceID and InstantID at build time and in the request: h94's and InstantX's layouts read, FaceID's LoRA
keyed as diffusers loads it, InstantID's IdentityNet and landmarks, and ``identity``'s shape. Their images against
diffusers: ``tests/integration/test_adapters.py`` and the SDXL stack's."""

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from build_engines.text_to_image.adapters import AdapterBuild, identity_nets, ip_info
from build_engines.text_to_image.controlnets import controlnet_support
from build_engines.text_to_image.ip_adapter import IpAdapterError, IpAdapterFolder
from build_engines.text_to_image.random_adapters import (
    FACEID_PLUSV2_WEIGHTS,
    make_faceid_adapter,
    make_instantid,
    make_ip_adapter,
)
from serve.adapters.ip_adapter import IDENTITY_NET, IP_CLIP, face_lora
from serve.adapters.lora_files import weightless
from serve.adapters.support import ip_inputs
from serve.faces.geometry import keypoints_drawing
from serve.protocol.schema import GenerationRequest
from serve.text_to_image.families import family_of_folder
from serve.text_to_image.generation import Outline
from serve.text_to_image.spec import CONTROLNET_PREFIX, FACE_EMBEDS, UNET
from tests.instantid import draw_kps

FACE = [0.5] * 512


@pytest.fixture(scope="module")
def faceid(default_model, tmp_path_factory):
    return make_faceid_adapter(default_model, tmp_path_factory.mktemp("faceid"), rank=3)


def test_a_faceid_folder_needs_no_image_encoder_and_its_lora_is_keyed_as_load_ip_adapter_hands_it_on(
    default_model, faceid
):
    folder = IpAdapterFolder.read(faceid)
    assert folder.face_id and folder.image_encoder is None
    processors = list(weightless(default_model, "unet").attn_processors)
    lora = folder.lora(processors)
    assert len(lora) == len(processors) * 4 * 2  # to_q, to_k, to_v, to_out; down and up
    assert f"unet.{processors[0]}.to_k_lora.down.weight" in lora and lora[next(iter(lora))].shape[0] == 3


def test_a_faceid_reads_faces_beside_an_image_adapter_whose_encoder_serves_the_others(default_model, faceid, tmp_path):
    image_adapter = make_ip_adapter(default_model, tmp_path / "ip")
    info = ip_info(AdapterBuild(lora=True, ip_adapters={"faceid": faceid, "ip": image_adapter}), default_model)
    assert info.kinds == ("faceid", "image") and info.embeds_shapes[0] == (512,)
    assert info.encoder_shape == info.embeds_shapes[1] and info.image_size == 32
    assert info.index(None) == 1 and info.face_adapter(None) == 0 and info.face_adapter("ip") is None
    alone = ip_info(AdapterBuild(lora=True, ip_adapters={"faceid": faceid}), default_model)
    assert alone.encoder_shape is None and alone.image_size == 0
    with pytest.raises(ValueError, match="FaceIDs"):
        alone.index(None)
    assert face_lora("faceid") == "faceid.lora"


def test_a_faceid_with_a_lora_on_engines_that_are_not_lora_ready_is_refused_naming_loras(default_model, faceid):
    with pytest.raises(IpAdapterError, match="--loras"):
        ip_info(AdapterBuild(lora=False, ip_adapters={"faceid": faceid}), default_model)


@pytest.mark.parametrize(
    "identity",
    [{}, {"image": "iVBORw0KGgo=", "embedding": FACE}, {"embedding": []}, {"embedding": FACE, "strength": -1}],
)
def test_an_identity_is_one_of_image_character_and_embedding_within_its_bounds(identity):
    with pytest.raises(ValidationError):
        GenerationRequest(prompt="x", identity=identity)


def test_an_identity_takes_a_face_by_each_of_its_three_ways():
    for way in ({"embedding": FACE}, {"character": "zed"}, {"image": "iVBORw0KGgo=", "face": "largest"}):
        assert GenerationRequest(prompt="x", identity=way).identity.strength == 1.0


def test_a_faceid_plus_v2_reads_the_encoder_s_states_of_the_face_beside_its_embedding(default_model, faceid, tmp_path):
    plus = make_faceid_adapter(default_model, tmp_path / "plus", plus=True)
    folder = IpAdapterFolder.read(plus)
    assert (folder.kind, folder.weights.name, folder.image_encoder.name) == (
        "faceid_plusv2",
        FACEID_PLUSV2_WEIGHTS,
        "image_encoder",
    )
    info = ip_info(AdapterBuild(lora=True, ip_adapters={"faceid": faceid, "plus": plus}), default_model)
    assert info.kinds == ("faceid", "faceid_plusv2") and info.face_states == (1,) and info.hidden_states
    assert info.encoder_output == ((224 // 32) ** 2 + 1, 32) and info.embeds_shapes == ((512,), (512,))
    clip = [spec for spec in ip_inputs(info) if spec.name == IP_CLIP.format(1)]
    assert [spec.dims for spec in clip] == [(info.references, 50, 32)]
    assert info.layers and not any(layer.startswith("encoder_hid_proj") for layer in info.layers)
    image = make_ip_adapter(default_model, tmp_path / "ip")  # read by image embeddings: one encoder output for all
    with pytest.raises(IpAdapterError, match="cannot be mixed"):
        ip_info(AdapterBuild(lora=True, ip_adapters={"ip": image, "plus": plus}), default_model)


@pytest.fixture(scope="module")
def instantid(tiny_xl_model, tmp_path_factory):
    return make_instantid(tiny_xl_model, tmp_path_factory.mktemp("instantid"), seed=2)


def test_an_instantid_folder_reads_the_face_as_one_token_and_its_identitynet_is_a_controlnet_reading_it(
    tiny_xl_model, instantid
):
    folder = IpAdapterFolder.read(instantid)
    assert (folder.kind, folder.image_encoder, folder.identity_net) == ("instantid", None, instantid / IDENTITY_NET)
    assert folder.lora([]) == {}  # no LoRA ships with it
    build = AdapterBuild(lora=True, ip_adapters={"iid": instantid})
    info = ip_info(build, tiny_xl_model)
    assert info.kinds == ("instantid",) and info.embeds_shapes == ((1, 512),) and info.encoder_shape is None
    assert info.face_adapter(None) == 0 and info.reads_landmarks(0) and not info.reads_face_states(0)
    family = family_of_folder(tiny_xl_model)
    support = controlnet_support(family, tiny_xl_model, {}, identity_nets(build))
    assert [(entry.name, entry.face) for entry in support.entries] == [("iid", 512)]
    assert support.listing() == [{"name": "iid", "status": "ready", "family": "sdxl", "identity": True}]
    spec = support.specs(family.specs, family.specs[UNET], family.dims)[f"{CONTROLNET_PREFIX}iid"]
    names = [tensor.name for tensor in spec.inputs]
    assert FACE_EMBEDS in names and "encoder_hidden_states" not in names and "text_embeds" in names
    assert next(t for t in spec.inputs if t.name == FACE_EMBEDS).dims == (1, 512)
    with pytest.raises(IpAdapterError, match="IdentityNet is a ControlNet of its name"):
        controlnet_support(family, tiny_xl_model, {"iid": instantid / IDENTITY_NET}, identity_nets(build))


def test_the_identitynet_module_feeds_the_controlnet_the_face_s_resampled_tokens(tiny_xl_model, instantid):
    from build_engines.text_to_image.ip_adapter import IdentityNetModule, face_projection

    folder = IpAdapterFolder.read(instantid)
    projection = face_projection(folder, torch.float32)
    face = torch.randn(2, 1, 512)
    tokens = projection(face)
    assert tokens.shape[:2] == (2, 16)
    seen = {}

    class Recording(torch.nn.Module):
        def forward(self, sample, timestep, states, *rest):
            seen["states"] = states
            return (sample,)

    IdentityNetModule(projection, Recording())(torch.zeros(2, 4, 8, 8), torch.zeros(2), face)
    assert torch.equal(seen["states"], tokens)


def test_the_landmarks_are_drawn_pixel_for_pixel_as_instantid_draws_them():
    rng = np.random.default_rng(0)
    for _ in range(40):
        width, height = (int(v) for v in rng.integers(40, 240, 2))
        landmarks = rng.uniform(-10, 250, (5, 2)).astype(np.float32)  # InsightFace's dtype; some off the canvas
        expected = np.asarray(draw_kps(Image.new("RGB", (width, height)), landmarks))
        assert np.array_equal(keypoints_drawing(landmarks, width, height), expected)


def test_an_identity_takes_keypoints_and_a_pose_strength_within_bounds():
    identity = GenerationRequest(prompt="x", identity={"embedding": FACE, "keypoints": "iVBORw0KGgo="}).identity
    assert identity.pose_strength == 1.0 and identity.keypoints
    with pytest.raises(ValidationError):
        GenerationRequest(prompt="x", identity={"embedding": FACE, "pose_strength": 2.5})


def test_an_identity_is_outlined_as_the_replica_reads_it_a_reference_and_an_instantid_s_controlnet():
    faceid = Outline.of_request(GenerationRequest(prompt="x", identity={"embedding": FACE}), 64, 64)
    assert faceid.referenced and not faceid.controls and faceid.adapted
    posed = {"embedding": FACE, "keypoints": "iVBORw0KGgo="}
    instantid = Outline.of_request(GenerationRequest(prompt="x", identity=posed), 64, 64)
    assert instantid.referenced and instantid.controls


def test_easel_status_names_each_ip_adapter_s_kind_beside_it_where_it_reads_faces():
    from serve.stack.status import _model_line

    model = {"id": "xl", "version": 1, "family": "sdxl", "native_size": "64x64", "loaded": True}
    model |= {"ip_adapters": ["ip", "iid"], "ip_adapter_kinds": {"ip": "image", "iid": "instantid"}}
    assert "IP-Adapter ip, IP-Adapter iid (instantid)" in _model_line(model)
