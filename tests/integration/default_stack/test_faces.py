"""Face restoration through the running stack: the served GFPGAN engine against the PyTorch module on the same crop,
and the served CodeFormer, its faces aligned by the stack's face models, against the same engines run here.

The picture is a drawn face (:func:`~build_engines.finishing.random_weights.drawn_face`) the Haar cascade finds
after the stack's ``general`` upscaler (tiny, random) has made it 4x larger.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from PIL import Image

from build_engines.faces.random_pack import drawn_faces
from build_engines.finishing.random_weights import drawn_face, random_restorer
from serve.finishing.restorers import NO_FACE, RestorerEntry, restore_faces
from serve.finishing.upscalers import Upscalers
from serve.paths import live_repository
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session
from tests.images import encode, icon_pixels
from tests.integration.default_stack.test_upscale import BODY, GENERATE, UPSCALE, answered_pixels, psnr
from tests.unit.test_finishing_faces import TorchRunner


def image_b64(pixels: np.ndarray) -> str:
    return base64.b64encode(encode(Image.fromarray(pixels))).decode()


def test_face_restorers_are_listed_beside_the_upscalers(api):
    listed = api.get("/v1/upscalers").json()["face_restorers"]
    assert listed == [
        {"name": "cf", "status": "ready", "architecture": "CodeFormer"},
        {"name": "face", "status": "ready", "architecture": "GFPGANv1Clean"},
    ]


def test_a_face_is_restored_as_the_pytorch_module_restores_its_crop(api):
    face = image_b64(drawn_face(64))
    upscaled = answered_pixels(api.post(UPSCALE, json={"image": face, "upscaler": "general"}))
    choice = {"restorer": "face", "weight": 0.5}
    answer = api.post(UPSCALE, json={"image": face, "upscaler": "general", "restore_faces": choice})
    served, faces = answered_pixels(answer), answer.json()["data"][0]["faces"]
    assert faces["found"] == 1
    entry = RestorerEntry("face", "", architecture="GFPGANv1Clean")
    want, found = asyncio.run(restore_faces(upscaled, entry, 0.5, TorchRunner(random_restorer(seed=1))))
    assert found == faces
    crop = faces["crops"][0]
    region = (slice(crop["y"], crop["y"] + crop["height"]), slice(crop["x"], crop["x"] + crop["width"]))
    assert psnr(served[region], want[region]) >= 40
    assert psnr(served[region], upscaled[region]) < 35  # restored, not passed through
    outside = np.ones(served.shape[:2], bool)
    outside[region] = False
    np.testing.assert_array_equal(served[outside], upscaled[outside])


def test_a_faceless_generation_comes_back_unchanged_with_the_note(api):
    plain = api.post(GENERATE, json=BODY)
    answer = api.post(GENERATE, json=BODY | {"restore_faces": {"restorer": "face"}})
    assert answer.status_code == 200, answer.text
    [image] = answer.json()["data"]
    assert image["faces"] == {"found": 0, "note": NO_FACE}
    np.testing.assert_array_equal(answered_pixels(answer), answered_pixels(plain))  # its record says what was asked


def test_an_edit_takes_restore_faces_as_a_form_field(api):
    files = {"image": ("icon.png", encode(Image.fromarray(icon_pixels(64))), "image/png")}
    form = {
        "prompt": "a red heart icon",
        "num_inference_steps": "2",
        "seed": "3",
        "restore_faces": '{"restorer": "face"}',
    }
    answer = api.post("/v1/images/edits", files=files, data=form)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"][0]["faces"] == {"found": 0, "note": NO_FACE}


class Engines:
    """The stack's engines as its Triton repository holds them, run here by ONNX Runtime (the reference)."""

    def __init__(self, repository) -> None:
        self.repository, self.sessions = repository, {}

    async def infer(self, spec, inputs, priority=0):
        if spec.name not in self.sessions:
            self.sessions[spec.name] = make_session(self.repository / spec.name / "1" / ONNX)
        names = [t.name for t in spec.outputs]
        return dict(zip(names, self.sessions[spec.name].run(names, dict(inputs)), strict=True))


def test_codeformer_restores_aligned_faces_at_their_fidelity_as_its_engines_do_here(api, stack, face_models):
    picture = drawn_faces([(160, 120, 40)], seed=2)  # found once (a disc of 60 four times: 4 CodeFormer runs a call)
    body = {"image": image_b64(picture), "upscaler": "general", "scale": 1}
    plain = answered_pixels(api.post(UPSCALE, json=body))
    answers = {
        fidelity: api.post(
            UPSCALE, json=body | {"restore_faces": {"restorer": "cf", "weight": 1, "fidelity": fidelity}}
        )
        for fidelity in (0.0, 0.9)
    }
    repository = live_repository(stack.options.run_dir)
    built = (repository / "restorer_cf" / "1" / ONNX).resolve().parents[1]  # the finishing engines' folder
    face_entry, restorer = Upscalers.read(built).faces.ready[0], RestorerEntry("cf", "", architecture="CodeFormer")
    engines = Engines(repository)
    served, faces = answered_pixels(answers[0.9]), answers[0.9].json()["data"][0]["faces"]
    assert faces["aligned"] is True and faces["found"] >= 1, faces
    want, found = asyncio.run(restore_faces(plain, restorer, 1.0, engines, 0.9, face_entry))
    assert found == faces and psnr(served, want) >= 40
    assert psnr(served, plain) < 35  # restored, not passed through
    assert psnr(answered_pixels(answers[0.0]), answered_pixels(answers[0.9])) < 45  # the fidelity counts


@pytest.mark.parametrize(
    ("route", "restore_faces", "field"),
    [
        (UPSCALE, {"restorer": "nope"}, "restore_faces.restorer"),
        (GENERATE, {"restorer": "nope"}, "restore_faces.restorer"),
        (GENERATE, {"restorer": "face", "weight": 1.5}, "restore_faces.weight"),
        (UPSCALE, {"restorer": "face", "weight": -0.1}, "restore_faces.weight"),
        (UPSCALE, {"restorer": "face", "fidelity": 0.5}, "restore_faces.fidelity"),
        (GENERATE, {"restorer": "cf", "fidelity": 1.5}, "restore_faces.fidelity"),
    ],
)
def test_a_bad_restore_faces_is_a_400_naming_the_field(api, route, restore_faces, field):
    body = {"image": image_b64(drawn_face(64)), "upscaler": "general"} if route == UPSCALE else BODY
    answer = api.post(route, json=body | {"restore_faces": restore_faces})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field
    assert api.get("/healthz").status_code == 200
