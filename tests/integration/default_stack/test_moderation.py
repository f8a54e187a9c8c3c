"""``POST /v1/moderations`` on the shared stack: its images through the served safety checker, its texts through
the (empty) blocklist; the stack's policy stays off, so the other modules' answers carry no marks."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
from PIL import Image

from build_engines.moderation.safety_checker import chosen_pictures
from serve.moderation.images import CATEGORY


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
