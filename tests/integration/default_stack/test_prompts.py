"""Prompts as users write them, on the shared stack: weighted, long ones in chunks, and what is cut said.

``POST /v1/prompts/analyze`` tells what a generation's encoders read; a generation's answer says the same cut (the
``Easel-Prompt-Truncated`` header, the body, gRPC's result). The embedded default's encoder reads 16 tokens at once
(14 of the prompt's), so its chunks show at small sizes.
"""

import numpy as np

from build_engines.moderation.text_moderator import FLAGGED_PROMPT
from serve.grpc_api import easel_pb2
from serve.text_to_image.spec import MAX_PROMPT_CHUNKS
from tests.integration.conftest import decode_images

GENERATE, ANALYZE = "/v1/images/generations", "/v1/prompts/analyze"
SMALL = {"num_inference_steps": 2, "size": "64x64", "seed": 5}


def test_analyze_reads_weights_chunks_and_what_would_be_cut(api):
    answer = api.post(ANALYZE, json={"prompt": "a (red:1.5) [heart] \\(icon\\)", "negative_prompt": "blurry"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] and body["family"] == "sd"
    assert body["encoders"]["text_encoder"] == {"chunk_tokens": 14, "max_chunks": MAX_PROMPT_CHUNKS}
    weights = [(w["text"], w["weight"]) for w in body["prompt"]["weights"]]
    assert weights == [("a ", 1.0), ("red", 1.5), (" ", 1.0), ("heart", round(1 / 1.1, 6)), (" (icon)", 1.0)]
    assert body["prompt"]["encoders"]["text_encoder"]["chunks"] == 1 and body["truncated"] == 0
    assert body["moderation"]["flagged"] is False and body["moderation"]["policy"] == "off"
    flagged = api.post(ANALYZE, json={"prompt": FLAGGED_PROMPT}).json()["moderation"]
    assert flagged["flagged"] is True and flagged["refused"] is False  # the stack's policy is off


def test_a_long_prompt_is_drawn_from_its_chunks_and_nothing_is_said_cut(api):
    prompt = "red heart icon " * 20  # 60 tokens (each word is one): 5 chunks
    read = api.post(ANALYZE, json={"prompt": prompt}).json()
    assert read["prompt"]["encoders"]["text_encoder"]["chunks"] == 5 and read["truncated"] == 0
    response = api.post(GENERATE, json={"prompt": prompt, **SMALL})
    assert response.status_code == 200, response.text
    assert "Easel-Prompt-Truncated" not in response.headers and "prompt_tokens_truncated" not in response.json()
    first_chunk = api.post(GENERATE, json={"prompt": "red heart icon " * 4 + "red heart", **SMALL})  # its first 14
    assert np.abs(decode_images(response).astype(int) - decode_images(first_chunk).astype(int)).max() > 0


def test_a_prompt_past_the_most_chunks_says_what_was_cut_everywhere(api, easel):
    prompt = "red heart icon " * 100  # 300 tokens: 224 read
    cut = api.post(ANALYZE, json={"prompt": prompt}).json()["truncated"]
    assert cut == 300 - 14 * MAX_PROMPT_CHUNKS
    response = api.post(GENERATE, json={"prompt": prompt, **SMALL})
    assert response.status_code == 200, response.text
    assert int(response.headers["Easel-Prompt-Truncated"]) == cut == response.json()["prompt_tokens_truncated"]
    events = list(easel.Generate(easel_pb2.GenerateRequest(prompt=prompt, size="64x64", seed=5), timeout=120))
    assert events[-1].result.prompt_tokens_truncated == cut


def test_weights_change_the_image_and_escapes_read_literally(api):
    plain = decode_images(api.post(GENERATE, json={"prompt": "red heart", **SMALL}))
    weighted = decode_images(api.post(GENERATE, json={"prompt": "(red:1.8) heart", **SMALL}))
    assert np.abs(plain.astype(int) - weighted.astype(int)).max() > 0
    escaped = api.post(GENERATE, json={"prompt": "\\(red\\) heart", **SMALL})
    assert escaped.status_code == 200, escaped.text


def test_bad_weighting_is_a_400_naming_the_field(api):
    for body, field in [
        ({"prompt": "(red:11) heart"}, "prompt"),
        ({"prompt": "red heart", "negative_prompt": "(blurry"}, "negative_prompt"),
    ]:
        for path in (GENERATE, ANALYZE):
            response = api.post(path, json=body | SMALL if path == GENERATE else body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == field
    assert api.post(ANALYZE, json={"prompt": "x", "model": "nope"}).json()["error"]["param"] == "model"
