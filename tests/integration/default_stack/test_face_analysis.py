"""``POST /v1/faces/analyze`` through the running stack: the face models' engines in Triton against InsightFace.

The stack serves a ``buffalo_l`` folder of random weights (``--faces``); the pictures are light discs on a dark ground
(:func:`~build_engines.faces.random_pack.drawn_faces`), which its detector finds. Every answer is held to
InsightFace's ``FaceAnalysis`` on the same files: boxes and landmarks within 1 pixel, embeddings at cosine >= 0.9999.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from build_engines.faces.random_pack import drawn_faces
from tests.faces import assert_same_faces, insightface_faces
from tests.images import encode

ANALYZE = "/v1/faces/analyze"
PICTURES = [
    ([(80, 100, 40), (220, 120, 50)], (320, 240)),
    ([(60, 150, 45), (150, 60, 30)], (200, 300)),
    ([(300, 200, 120)], (640, 400)),
]


def _b64(pixels) -> str:
    return base64.b64encode(encode(Image.fromarray(pixels))).decode()


def test_the_face_models_are_listed_with_the_finishing_engines(api):
    listed = api.get("/v1/upscalers").json()["faces"]
    assert listed == [
        {
            "name": "buffalo_l",
            "status": "ready",
            "architecture": "scrfd+arcface",
            "detector": "det_10g.onnx",
            "recognizer": "w600k_r50.onnx",
            "embedding_size": 512,
        }
    ]


def test_faces_found_through_triton_match_insightface_on_the_same_files(api, face_models):
    centres, size = PICTURES[0]
    pixels = drawn_faces(centres, size)
    answer = api.post(ANALYZE, json={"image": _b64(pixels)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["size"]) == ("buffalo_l", "320x240")
    assert_same_faces(body["data"], insightface_faces(face_models, pixels, max_num=16))


def test_concurrent_analyses_share_the_engines_and_each_answers_as_alone(api, face_models):
    pictures = [drawn_faces(centres, size, seed=i) for i, (centres, size) in enumerate(PICTURES)]
    with ThreadPoolExecutor(len(pictures)) as pool:
        answers = list(pool.map(lambda p: api.post(ANALYZE, json={"image": _b64(p), "max_faces": 3}), pictures))
    for pixels, answer in zip(pictures, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert_same_faces(answer.json()["data"], insightface_faces(face_models, pixels, max_num=3))


def test_an_image_without_a_face_answers_an_empty_list(api):
    answer = api.post(ANALYZE, json={"image": _b64(drawn_faces([]))})
    assert answer.status_code == 200 and answer.json()["data"] == [], answer.text


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"image": base64.b64encode(b"not an image").decode()}, "image", "not"),
        ({"image": "%%%"}, "image", "base64"),
        ({"image": _b64(drawn_faces([])), "max_faces": 0}, "max_faces", "greater than or equal to 1"),
        ({"image": _b64(drawn_faces([])), "max_faces": 17}, "max_faces", "less than or equal to 16"),
        ({"image": _b64(drawn_faces([])), "faces": 2}, "faces", "Extra inputs"),
    ],
    ids=["no-image", "not-base64", "no-faces-asked", "too-many-faces", "unknown-field"],
)
def test_bad_input_is_a_400_naming_the_field_and_the_stack_serves_on(api, face_models, body, field, says):
    refused = api.post(ANALYZE, json=body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == field and says in error["message"], error
    pixels = drawn_faces(*PICTURES[2])
    served = api.post(ANALYZE, json={"image": _b64(pixels), "max_faces": 2})
    assert_same_faces(served.json()["data"], insightface_faces(face_models, pixels, max_num=2))
