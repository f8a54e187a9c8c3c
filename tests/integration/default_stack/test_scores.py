"""Scores as served engines, on the shared stack's tiny random scorer (``--scorer clip=DIR aesthetic=FILE``).

``POST /v1/images/score`` through Triton against transformers' ``CLIPModel`` and the aesthetic head's PyTorch module
on the same pictures; a generation asking ``scores`` carries each image's, the same as scoring its PNG; best-of-n
answers the best of the single requests with its candidates' seeds; the scores are in the metrics by variant; what
the route cannot read is a 400 naming the field.
"""

import base64
import io

import numpy as np
import torch
from PIL import Image

from build_engines.scoring import AestheticPredictor

SCORE, GENERATE = "/v1/images/score", "/v1/images/generations"


def png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_clip_score_through_triton_is_transformers_cosine(api, scorers):
    from transformers import CLIPModel, CLIPProcessor

    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (48 + 8 * i, 40, 3), dtype=np.uint8) for i in range(3)]
    prompt = "a red heart icon"
    response = api.post(SCORE, json={"images": [png(p) for p in pictures], "prompt": prompt})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    model = CLIPModel.from_pretrained(scorers["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(scorers["clip"])
    inputs = processor(text=[prompt], images=[Image.fromarray(p) for p in pictures], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        aesthetic = AestheticPredictor.load(scorers["aesthetic"])(out.image_embeds)[:, 0].numpy()
    cosine = (out.image_embeds @ out.text_embeds.T)[:, 0].numpy()
    assert [item["index"] for item in data] == [0, 1, 2]
    assert np.abs(np.array([item["clip_score"] for item in data]) - cosine).max() <= 1e-4
    assert np.abs(np.array([item["aesthetic"] for item in data]) - aesthetic).max() <= 1e-4
    assert "clip_score" not in api.post(SCORE, json={"images": [png(pictures[0])]}).json()["data"][0]


def test_a_generation_asking_scores_carries_each_images(api):
    body = {"prompt": "(red:1.2) heart", "n": 2, "size": "64x64", "num_inference_steps": 2, "seed": 9, "scores": True}
    response = api.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    items = response.json()["data"]
    again = api.post(SCORE, json={"images": [item["b64_json"] for item in items], "prompt": "red heart"}).json()
    for item, scored in zip(items, again["data"], strict=True):
        assert set(item["scores"]) == {"clip_score", "aesthetic"}
        assert abs(item["scores"]["clip_score"] - scored["clip_score"]) <= 1e-5  # the weights read out of the prompt
        assert abs(item["scores"]["aesthetic"] - scored["aesthetic"]) <= 1e-5
    plain = api.post(GENERATE, json=body | {"scores": False}).json()["data"]
    assert all("scores" not in item for item in plain)


def test_best_of_n_answers_the_best_of_the_single_requests_with_those_seeds(api):
    body = {"prompt": "red heart", "size": "64x64", "num_inference_steps": 2, "seed": 31, "scores": True}
    response = api.post(GENERATE, json=body | {"candidates": 4})
    assert response.status_code == 200, response.text
    answer = response.json()
    singles = [api.post(GENERATE, json=body | {"seed": 31 + i}).json()["data"][0] for i in range(4)]
    clip = [single["scores"]["clip_score"] for single in singles]
    top = int(np.argmax(clip))
    [item] = answer["data"]
    assert item["seed"] == 31 + top and item["scores"] == answer["candidates"][top]["scores"]
    assert [c["seed"] for c in answer["candidates"]] == [31, 32, 33, 34]
    assert [c["kept"] for c in answer["candidates"]] == [i == top for i in range(4)]
    assert np.abs(np.array([c["scores"]["clip_score"] for c in answer["candidates"]]) - clip).max() <= 1e-4
    got, want = (np.asarray(Image.open(io.BytesIO(base64.b64decode(i["b64_json"])))) for i in (item, singles[top]))
    assert np.abs(got.astype(int) - want).max() <= 1  # one batch of 4 through Triton, each row its seed's image
    for extra, field in [({"candidates": 9}, "candidates"), ({"candidates": 2, "best_of": "sharpness"}, "best_of")]:
        refused = api.post(GENERATE, json=body | extra)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text


def test_best_of_n_with_many_prompts_answers_each_prompt_s_own_best(api):
    body = {"size": "64x64", "num_inference_steps": 2, "candidates": 2, "scores": True}
    prompts = [{"prompt": "red heart", "seed": 31}, {"prompt": "blue star", "seed": 40}]
    response = api.post(GENERATE, json=body | {"prompts": prompts})
    assert response.status_code == 200, response.text
    answer = response.json()
    alone = [api.post(GENERATE, json=body | prompt).json() for prompt in prompts]  # each prompt's own request
    assert [item["prompt_index"] for item in answer["data"]] == [0, 1]
    assert [item["seed"] for item in answer["data"]] == [single["data"][0]["seed"] for single in alone]
    assert [c["prompt_index"] for c in answer["candidates"]] == [0, 0, 1, 1]
    assert [c["seed"] for c in answer["candidates"]] == [31, 32, 40, 41]
    for item, single in zip(answer["data"], alone, strict=True):
        got, want = (
            np.asarray(Image.open(io.BytesIO(base64.b64decode(i["b64_json"])))) for i in (item, single["data"][0])
        )
        assert np.abs(got.astype(int) - want).max() <= 1


def test_what_the_route_cannot_read_is_a_400_naming_the_field(api):
    for body, field in [
        ({"images": []}, "images"),
        ({"images": ["not base64!"]}, "images"),
        ({"images": [base64.b64encode(b"not an image").decode()]}, "images.0"),
        ({"images": [png(np.zeros((8, 8, 3), np.uint8))], "prompt": "(red"}, "prompt"),
    ]:
        response = api.post(SCORE, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == field, response.text
