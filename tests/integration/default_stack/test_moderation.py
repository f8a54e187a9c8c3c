"""``POST /v1/moderations`` on the shared stack: its images through the served safety checker, its texts through
the (empty) blocklist and the served text moderator; the stack's policy stays off, so the other modules' answers
carry no marks (a ``block`` key exists only while its test runs)."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from build_engines.moderation.safety_checker import chosen_pictures
from build_engines.moderation.text_moderator import (
    FLAGGED_CATEGORY,
    FLAGGED_PROMPT,
    PASSING_PROMPT,
    Probabilities,
    character_tokenizer,
    load_text_moderator,
)
from serve.access import ACTIVE_CHECK_S, open_key_store
from serve.access.keys import KeyLimits
from serve.moderation import Policy
from serve.moderation.images import CATEGORY, SAFETY_CHECKER
from serve.moderation.text_model import TEXT_MODERATOR, windows
from serve.routes import Scope


def data_url(pixels: np.ndarray) -> str:
    """``pixels`` as a PNG data URL."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_the_openai_client_s_moderations_flag_what_the_served_checker_flags(stack):
    flagged, passes = chosen_pictures()
    client = openai.OpenAI(api_key="none", base_url=f"{stack.info.api_url}/v1", max_retries=0)
    answer = client.moderations.create(
        model="omni-moderation-latest",
        input=[
            {"type": "image_url", "image_url": {"url": data_url(flagged)}},
            {"type": "image_url", "image_url": {"url": data_url(passes)}},
            {"type": "text", "text": "a red heart icon"},
        ],
    )
    assert [result.flagged for result in answer.results] == [True, False, False]
    assert answer.results[0].model_dump()["categories"][CATEGORY] is True
    assert answer.results[0].model_dump()["category_scores"][CATEGORY] > 0 >= answer.results[1].category_scores.sexual


def test_the_served_text_moderator_flags_the_chosen_prompt_with_its_category_and_score(stack, text_moderator):
    """Through Triton: the classifier's probabilities (within 1e-4 of transformers'), flagged at its threshold."""
    client = openai.OpenAI(api_key="none", base_url=f"{stack.info.api_url}/v1", max_retries=0)
    answer = client.moderations.create(model="text-moderation-latest", input=[FLAGGED_PROMPT, PASSING_PROMPT])
    flagged, passing = (result.model_dump() for result in answer.results)
    assert [flagged["flagged"], passing["flagged"]] == [True, False]
    assert [name for name, flag in flagged["categories"].items() if flag] == [FLAGGED_CATEGORY]
    rows, _ = windows(character_tokenizer(), [FLAGGED_PROMPT, PASSING_PROMPT])
    with torch.no_grad():
        want = Probabilities(load_text_moderator(text_moderator))(*(torch.from_numpy(a) for a in rows.values()))
    got = [flagged["category_scores"][FLAGGED_CATEGORY], passing["category_scores"][FLAGGED_CATEGORY]]
    assert got == pytest.approx(want[:, -1].tolist(), abs=1e-4) and got[0] > 0.9
    ready = httpx.get(f"{stack.info.api_url}/readyz", timeout=30).json()["models"]
    assert ready[TEXT_MODERATOR] is True and ready[SAFETY_CHECKER] is True


def test_a_blocking_key_s_prompt_the_moderator_flags_is_a_400_content_policy_violation(stack):
    """The key exists only for this test (the API is open again after it): its policy, block, refuses the prompt."""
    store = open_key_store(stack.options.store)
    record, key = store.create("public app", {Scope.GENERATE}, KeyLimits(moderation=Policy.BLOCK))
    try:
        time.sleep(ACTIVE_CHECK_S + 0.5)  # each replica re-reads whether keys exist
        client = openai.OpenAI(api_key=key, base_url=f"{stack.info.api_url}/v1", max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(prompt=FLAGGED_PROMPT, size="64x64", extra_body={"num_inference_steps": 2})
        assert refused.value.code == "content_policy_violation" and refused.value.param == "prompt"
        assert FLAGGED_CATEGORY in refused.value.message
    finally:
        store.revoke(record.id)
        time.sleep(ACTIVE_CHECK_S + 0.5)
