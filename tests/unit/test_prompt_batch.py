"""Many prompts per call without a server: prompt or prompts (exactly one), each prompt's seed, the rows' bound, the
one-prompt requests a call is, the images' origins, and running them together (steps heard once, a failure stops
all)."""

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError

from serve.errors import invalid_input
from serve.protocol.prompt_batch import run_together, steps_together
from serve.protocol.schema import GenerationRequest

PROMPTS = [{"prompt": "a red heart"}, {"prompt": "a blue star", "seed": 9}, {"prompt": "a green leaf"}]


def _refused(body: dict) -> tuple[str, str]:
    with pytest.raises(ValidationError) as error:
        GenerationRequest.model_validate(body)
    refusal = invalid_input(error.value)
    return refusal.field, refusal.message


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({}, "prompt", "required"),
        ({"prompt": "a", "prompts": PROMPTS}, "prompts", "not both"),
        ({"prompt": None, "prompts": PROMPTS}, "prompt", "valid string"),
        ({"prompts": []}, "prompts", "at least 1"),
        ({"prompts": [{"prompt": " "}]}, "prompts.0.prompt", "non-space"),
        ({"prompts": [{"prompt": "a", "seed": -1}]}, "prompts.0.seed", "greater than"),
        ({"prompts": PROMPTS, "n": 2}, "prompts", "over 4 images"),
        ({"prompts": PROMPTS, "upscale": {"upscaler": "x2", "denoise": 0.3}}, "prompts", "upscale.denoise"),
    ],
)
def test_prompt_or_prompts_exactly_one_and_the_rows_bounded_each_a_400_naming_its_field(body, field, says):
    named, message = _refused(body)
    assert named == field and says in message, message


def test_each_prompt_draws_with_its_own_seed_or_the_request_s_plus_its_index():
    request = GenerationRequest.model_validate({"prompts": PROMPTS, "seed": 100, "n": 1, "negative_prompt": "blur"})
    singles = request.singles(100)
    assert [(s.prompt, s.seed, s.prompts) for s in singles] == [
        ("a red heart", 100, None),
        ("a blue star", 9, None),
        ("a green leaf", 102, None),
    ]
    assert all(s.negative_prompt == "blur" and s.rows == 1 for s in singles) and request.rows == 3
    assert [request.origin(i, 100)[0].prompt for i in range(3)] == ["a red heart", "a blue star", "a green leaf"]
    two_each = GenerationRequest.model_validate({"prompts": PROMPTS[:2], "n": 2})
    assert [(s.prompt, place) for s, place in (two_each.origin(i, 7) for i in range(4))] == [
        ("a red heart", 0),
        ("a red heart", 1),
        ("a blue star", 0),
        ("a blue star", 1),
    ]
    one = GenerationRequest.model_validate({"prompt": "a fox"})
    assert one.prompt_texts() == [("prompt", "a fox")] and one.origin(0, 5)[0].seed == 5
    assert request.prompt_texts()[1] == ("prompts.1.prompt", "a blue star")


def test_each_frame_of_a_video_is_made_by_the_video_s_own_request():
    """A video answers more images (its frames) than its rows: each one's record is the video's request."""
    from serve.protocol.video import VideoGeneration

    video = VideoGeneration(prompt="a fox", frames=8, fps=8, motion_adapter="m", background=True, size="64x64")
    for frame in range(8):
        made_by, place = video.origin(frame, 5)
        assert (made_by.prompt, made_by.seed, made_by.frames, place) == ("a fox", 5, 8, frame)


def test_the_schema_states_prompt_or_prompts_and_neither_is_nullable():
    schema = GenerationRequest.model_json_schema()
    one_of_them = {"oneOf": [{"required": ["prompt"]}, {"required": ["prompts"]}]}
    assert "required" not in schema and one_of_them in schema["allOf"]
    assert schema["properties"]["prompt"]["type"] == "string" and "default" not in schema["properties"]["prompt"]
    assert schema["properties"]["prompts"]["maxItems"] == 4 and "default" not in schema["properties"]["prompts"]


def test_steps_run_together_are_heard_once_each_when_every_generation_did_them():
    heard: list[int] = []

    async def on_step(step: int, total: int, latents: np.ndarray) -> None:
        heard.append(step)

    async def generation(report, delay: float) -> int:
        for step in range(1, 4):
            await asyncio.sleep(delay)
            await report(step, 3, np.zeros(1))
        return step

    reports = steps_together(on_step, 2)
    assert asyncio.run(run_together([generation(reports[0], 0.001), generation(reports[1], 0.003)])) == [3, 3]
    assert heard == [1, 2, 3] and steps_together(None, 2) == [None, None]


def test_a_failure_of_one_generation_cancels_the_others():
    stopped = []

    async def long_one() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        asyncio.run(asyncio.wait_for(run_together([long_one(), failing()]), 30))
    assert stopped == [True]


def test_an_answer_names_each_image_s_prompt_and_its_record_is_its_own_one_prompt_request(engine_dir, tmp_path):
    import base64
    import io
    import json

    from PIL import Image

    from serve.results.record import RECORD
    from tests.unit.test_results import _generations

    generations, _ = _generations(engine_dir, tmp_path)

    async def scenario():
        many = GenerationRequest.model_validate({"prompts": PROMPTS, "seed": 10, "num_inference_steps": 2})
        priced = await generations.admitted(many, None)
        one = await generations.admitted(GenerationRequest(prompt="a red heart", seed=10, num_inference_steps=2), None)
        return priced.cost, one.cost, (await generations.served_answer(priced, None))[0]

    cost, one_cost, body = asyncio.run(scenario())
    assert cost == pytest.approx(3 * one_cost) and body["seed"] == 10
    assert [item["prompt_index"] for item in body["data"]] == [0, 1, 2]
    records = [json.loads(Image.open(io.BytesIO(base64.b64decode(i["b64_json"]))).info[RECORD]) for i in body["data"]]
    assert [(r["prompt"], r["seed"], r["n"], r["index"]) for r in records] == [
        ("a red heart", 10, 1, 0),
        ("a blue star", 9, 1, 0),
        ("a green leaf", 12, 1, 0),
    ]
    assert all("prompts" not in r["request"] for r in records) and records[1]["request"]["prompt"] == "a blue star"
    GenerationRequest.model_validate(records[2]["request"])  # a record's request is a body to post again


def test_grpc_s_images_name_their_prompt_as_the_http_answer_s_items_do(engine_dir, tmp_path):
    from serve.grpc_api import messages as grpc_api
    from tests.unit.test_results import _generations

    generations, _ = _generations(engine_dir, tmp_path)

    async def scenario():
        many = GenerationRequest.model_validate({"prompts": PROMPTS[:2], "n": 2, "seed": 4})
        admitted = await generations.admitted(many, None)
        return [grpc_api.event(event) async for event in generations.events(admitted, None)]

    events = asyncio.run(scenario())  # as the servicer sends them
    assert [event.WhichOneof("event") for event in events] == ["progress", "result"]
    assert [image.prompt_index for image in events[-1].result.images] == [0, 0, 1, 1]
