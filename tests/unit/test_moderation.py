"""Moderation without a server: the blocklist, the policy and a key's own, the moderations body, blacking out."""

import asyncio
import base64
import io
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import ValidationError

from serve import metrics
from serve.access.keys import ApiKey, KeyLimits
from serve.errors import ContentPolicyViolation, InvalidInput, invalid_input
from serve.moderation import Policy, Screening, Verdict, policy_of
from serve.moderation.policy import blacked_out, marked, moderated
from serve.moderation.requests import (
    MAX_MODERATION_IMAGE_BYTES,
    MAX_MODERATION_INPUTS,
    MAX_MODERATION_TEXT_CHARS,
    MAX_MODERATION_URL_CHARS,
    ModerationRequest,
)
from serve.moderation.text import DEFAULT_CATEGORY, Blocklist
from serve.protocol.schema import GenerationRequest
from serve.routes import Scope, route
from serve.serving.moderation import Moderation
from serve.settings import StackOptions
from serve.text_to_image.generation import EncodedImages

BLOCKLIST = """\
# words and patterns no prompt may have
gore
violence: blood bath
re:kill(ing|ed)?\\b
weapons: re:\\bgun(s)?\\b
"""


@pytest.fixture
def counted(monkeypatch) -> list[dict]:
    """The moderation counter's increments (no Ray metric in a unit test)."""
    seen = []
    monkeypatch.setattr(metrics, "count", lambda spec, value=1.0, **tags: seen.append({"metric": spec.name} | tags))
    return seen


def png(color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


class RedFlagger:
    """A test double of the image checker (its protocol): flags an RGB image whose first pixel is mostly red."""

    def __init__(self) -> None:
        self.calls = 0

    async def check(self, images: list[np.ndarray]) -> list[Verdict]:
        self.calls += 1
        red = [bool(image[0, 0, 0] > 200) for image in images]
        return [Verdict({"violence": flag}, {"violence": 0.9 if flag else 0.1}) for flag in red]


def checked_by(checker: RedFlagger, images: list[bytes]) -> list[Verdict]:
    """``checker``'s verdicts on encoded ``images``."""
    return asyncio.run(checker.check([pixels(image) for image in images]))


def key(policy: Policy | None) -> ApiKey:
    return ApiKey("k1", "app", frozenset({Scope.GENERATE}), KeyLimits(moderation=policy), 0.0)


def test_a_plain_entry_matches_whole_words_whatever_the_case_and_a_pattern_as_written():
    blocklist = Blocklist.parse(BLOCKLIST)
    assert blocklist.categories == [DEFAULT_CATEGORY, "violence", "weapons"]
    assert blocklist.check("GORE everywhere").categories == {
        DEFAULT_CATEGORY: True,
        "violence": False,
        "weapons": False,
    }
    assert not blocklist.check("gorely, a gored bull").flagged  # whole words only
    assert blocklist.check("a Blood  bath").flagged is False and blocklist.check("a blood bath!").flagged
    assert blocklist.check("killing time").categories[DEFAULT_CATEGORY]
    assert blocklist.check("skill").flagged  # a pattern is searched as written: no word boundaries added
    flagged = blocklist.check("Guns and gore")
    assert flagged.flagged_categories == [DEFAULT_CATEGORY, "weapons"]
    assert flagged.scores == {DEFAULT_CATEGORY: 1.0, "violence": 0.0, "weapons": 1.0}
    assert not Blocklist().check("gore").flagged  # no blocklist flags nothing


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("re:(unclosed", "line 2: '(unclosed' is not a regular expression"),
        ("hate:", "line 2: an empty entry"),
        ("re:x*", "line 2: 're:x*' matches every text"),
    ],
)
def test_a_line_that_is_no_entry_is_refused_naming_its_line(line, says):
    with pytest.raises(ValueError, match=re.escape(f"blocklist.txt, {says}")):
        Blocklist.parse(f"# a comment\n{line}\n", "blocklist.txt")


def test_a_bad_blocklist_file_or_policy_is_an_error_of_easel_up(tmp_path):
    bad = tmp_path / "blocklist.txt"
    bad.write_text("fine\nre:[\n")
    with pytest.raises(ValidationError, match=r"prompt_blocklist[\s\S]*blocklist.txt, line 2"):
        StackOptions(prompt_blocklist=bad)
    with pytest.raises(ValidationError, match="moderation"):
        StackOptions(moderation="strict")
    assert StackOptions().moderation is Policy.OFF  # nothing changes for a first run


def test_a_key_s_own_policy_overrides_the_stack_s_and_an_unknown_one_is_refused_naming_the_field():
    assert policy_of(Policy.OFF, None) is Policy.OFF and policy_of(Policy.OFF, Policy.BLOCK) is Policy.BLOCK
    assert policy_of(Policy.BLOCK, Policy.OFF) is Policy.OFF
    with pytest.raises(ValidationError) as refused:
        KeyLimits(moderation="strict")
    assert invalid_input(refused.value).field == "moderation"
    assert KeyLimits.model_validate_json(KeyLimits(moderation=Policy.FLAG).model_dump_json()).moderation is Policy.FLAG


def test_keys_create_takes_a_moderation_policy_and_lists_it(tmp_path):
    from serve.cli.main import main

    store = f"sqlite:///{tmp_path / 'easel.db'}"
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--name", "app", "--moderation", "block", "--store", store])
    assert created.exit_code == 0, created.output
    assert "moderation=block" in runner.invoke(main, ["keys", "list", "--store", store]).output
    bad = runner.invoke(main, ["keys", "create", "--name", "x", "--moderation", "strict", "--store", store])
    assert bad.exit_code == 2 and "--moderation" in bad.output


def screened(moderation: Moderation, request: GenerationRequest, caller: ApiKey | None) -> Screening:
    return asyncio.run(moderation.screened(request, caller))


def test_a_flagged_prompt_is_refused_under_block_marked_under_flag_and_unchecked_under_off(counted):
    moderation = Moderation(Policy.OFF, Blocklist.parse(BLOCKLIST))
    request = GenerationRequest(prompt="a gun on a table", negative_prompt="gore")
    assert screened(moderation, request, None) == Screening(Policy.OFF)
    flagged = screened(moderation, request, key(Policy.FLAG))
    assert flagged.policy is Policy.FLAG and flagged.inputs.flagged_categories == ["weapons"] and flagged.key_id == "k1"
    with pytest.raises(ContentPolicyViolation) as refused:
        screened(moderation, request, key(Policy.BLOCK))
    error = refused.value
    assert error.status == 400 and error.field == "prompt" and "weapons" in error.message
    assert error.body()["error"]["code"] == "content_policy_violation"
    assert error.body()["error"]["type"] == "invalid_request_error"
    assert (
        counted == [{"metric": "easel_moderation_flags", "item": "prompt", "category": "weapons", "key_id": "k1"}] * 2
    )
    harmless = GenerationRequest(prompt="a lighthouse", negative_prompt="gore, guns")  # the negative is not checked
    assert not screened(Moderation(Policy.BLOCK, Blocklist.parse(BLOCKLIST)), harmless, None).inputs.flagged


def test_each_of_many_prompts_is_screened_and_a_flagged_one_refused_naming_it(counted):
    moderation = Moderation(Policy.BLOCK, Blocklist.parse(BLOCKLIST))
    many = GenerationRequest(prompts=[{"prompt": "a lighthouse"}, {"prompt": "a gun on a table"}])
    with pytest.raises(ContentPolicyViolation) as refused:
        screened(moderation, many, None)
    assert refused.value.field == "prompts.1.prompt" and "weapons" in refused.value.message
    assert [count["item"] for count in counted] == ["prompt"]
    flagged = screened(moderation, many, key(Policy.FLAG))
    assert flagged.inputs.flagged_categories == ["weapons"]  # the prompts' verdicts merged


def test_a_flagged_input_image_is_refused_under_block_naming_its_field_and_marks_the_answer_under_flag(counted):
    red, blue = (base64.b64encode(png(color)).decode() for color in ((250, 0, 0), (0, 0, 250)))
    checker = RedFlagger()
    moderation = Moderation(Policy.BLOCK, Blocklist(), checker)
    control = {"name": "edges", "image": red}
    for request, field in (
        (GenerationRequest(prompt="a cat", image=[blue, red]), "image"),
        (GenerationRequest(prompt="a cat", controlnets=[control]), "controlnets.0.image"),
    ):
        with pytest.raises(ContentPolicyViolation) as refused:
            screened(moderation, request, None)
        assert refused.value.field == field and "violence" in refused.value.message
    assert counted[0] == {
        "metric": "easel_moderation_flags",
        "item": "input_image",
        "category": "violence",
        "key_id": "none",
    }
    marked = screened(moderation, GenerationRequest(prompt="a cat", image=[red]), key(Policy.FLAG))
    assert marked.inputs.categories == {"violence": True}
    clean = screened(moderation, GenerationRequest(prompt="a cat", image=[blue], mask=red), None)
    assert not clean.inputs.flagged  # a mask is no picture: not checked
    calls = checker.calls
    assert screened(moderation, GenerationRequest(prompt="a cat", image=[red]), key(Policy.OFF)) == Screening(
        Policy.OFF, key_id="k1"
    )
    assert checker.calls == calls  # off: nothing checked


def test_under_block_a_flagged_image_is_blacked_out_at_its_size_and_marked():
    red, blue = png((250, 0, 0)), png((0, 0, 250), (8, 40))
    done = moderated([red, blue], Screening(Policy.BLOCK), checked_by(RedFlagger(), [red, blue]))
    assert [v.flagged for v in done.verdicts] == [True, False] and done.flagged
    assert pixels(done.images[0]).shape == (16, 24, 3) and not pixels(done.images[0]).any()
    assert done.images[1] == blue
    assert done.marks()[0] == {"flagged": True, "categories": {"violence": True}, "category_scores": {"violence": 0.9}}
    assert blacked_out(png((1, 2, 3), (7, 5))) != png((1, 2, 3), (7, 5))


def test_under_flag_images_are_marked_not_changed_and_carry_the_prompt_s_flags():
    red, blue = png((250, 0, 0)), png((0, 0, 250))
    prompt = Verdict({"weapons": True}, {"weapons": 1.0})
    done = moderated([red, blue], Screening(Policy.FLAG, prompt), checked_by(RedFlagger(), [red, blue]))
    assert done.images == [red, blue]
    assert [m["categories"] for m in done.marks()] == [
        {"weapons": True, "violence": True},
        {"weapons": True, "violence": False},
    ]
    without_checker = moderated([blue], Screening(Policy.FLAG, prompt), None)
    assert without_checker.marks() == [prompt.to_api()] and without_checker.checked == []


def test_under_off_nothing_is_checked_nor_marked():
    checker = RedFlagger()
    result = EncodedImages([png((250, 0, 0))], seed=7, prompt_tokens_dropped=0)
    same, done = asyncio.run(Moderation(Policy.OFF, Blocklist(), checker).checked(result, Screening(Policy.OFF)))
    assert checker.calls == 0 and same == result and done.verdicts is None and done.marks() is None


def test_the_gateway_s_image_check_blacks_out_counts_by_key_and_keeps_the_rest_of_the_result(counted):
    moderation = Moderation(Policy.BLOCK, Blocklist(), RedFlagger())
    result = EncodedImages([png((250, 0, 0)), png((0, 250, 0))], seed=7, prompt_tokens_dropped=0)
    checked, done = asyncio.run(moderation.checked(result, Screening(Policy.BLOCK, key_id="k1")))
    assert checked.seed == 7 and not pixels(checked.images[0]).any() and checked.images[1] == result.images[1]
    assert done.flagged and counted == [
        {"metric": "easel_moderation_flags", "item": "image", "category": "violence", "key_id": "k1"}
    ]


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def test_the_moderations_body_takes_openai_s_shapes():
    assert ModerationRequest.model_validate({"input": "a cat"}).items() == ["a cat"]
    assert ModerationRequest.model_validate({"input": ["a", "b"], "model": "omni-moderation-latest"}).items() == [
        "a",
        "b",
    ]
    image = png((1, 2, 3))
    parts = [{"type": "text", "text": "a cat"}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    assert ModerationRequest.model_validate({"input": parts}).items() == ["a cat", image]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"input": "x" * (MAX_MODERATION_TEXT_CHARS + 1)}, "input.0.text.text", f"at most {MAX_MODERATION_TEXT_CHARS}"),
        ({"input": ["a"] * (MAX_MODERATION_INPUTS + 1)}, "input", f"at most {MAX_MODERATION_INPUTS} items"),
        ({"input": []}, "input", "at least 1 item"),
        ({"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}, None, "match pattern"),
        ({"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,A!!"}}]}, None, "not base64"),
        ({"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}]}, None, "match pattern"),
        (
            {"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * (6 << 20)}}]},
            None,
            f"at most {MAX_MODERATION_URL_CHARS} characters",
        ),
        ({"input": [{"type": "audio", "audio": "x"}]}, None, "type"),
    ],
)
def test_a_moderations_body_over_its_limits_is_a_400_naming_the_field_and_the_limit(body, field, says):
    with pytest.raises(ValidationError) as refused:
        ModerationRequest.model_validate(body)
    error = invalid_input(refused.value)
    assert error.status == 400 and error.field.startswith("input") and says in error.message
    assert field is None or error.field == field


def test_moderations_answer_one_result_per_item_and_refuse_images_without_a_checker(counted):
    texts = ModerationRequest.model_validate({"input": ["a red gun", "a lighthouse"]})
    answer = asyncio.run(Moderation(Policy.OFF, Blocklist.parse(BLOCKLIST)).moderations(texts, None))  # any policy
    assert answer["id"].startswith("modr-") and answer["model"] == "easel-moderation"
    assert [r["flagged"] for r in answer["results"]] == [True, False]
    assert answer["results"][0]["categories"]["weapons"] and counted[0]["item"] == "input"
    mixed = ModerationRequest.model_validate(
        {
            "input": [
                {"type": "image_url", "image_url": {"url": data_url(png((250, 0, 0)))}},
                {"type": "text", "text": "x"},
            ]
        }
    )
    with pytest.raises(InvalidInput, match="no image moderation model") as refused:
        asyncio.run(Moderation(Policy.BLOCK, Blocklist()).moderations(mixed, None))
    assert refused.value.field == "input"
    checked = asyncio.run(Moderation(Policy.OFF, Blocklist(), RedFlagger()).moderations(mixed, None))["results"]
    assert [r["flagged"] for r in checked] == [True, False]


def test_the_moderations_route_is_declared_once_with_its_scope_and_body_limit():
    declared = route("POST", "/v1/moderations")
    assert declared.scope is Scope.GENERATE and declared.body_limit > MAX_MODERATION_IMAGE_BYTES


def test_an_upscale_s_flagged_image_is_refused_under_block_naming_image_and_marks_the_answer_under_flag(counted):
    red, blue = png((250, 0, 0)), png((0, 0, 250))
    checker = RedFlagger()
    moderation = Moderation(Policy.OFF, Blocklist(), checker)
    with pytest.raises(ContentPolicyViolation) as refused:
        asyncio.run(moderation.screened_upload(red, key(Policy.BLOCK)))
    assert refused.value.field == "image" and "violence" in refused.value.message
    assert counted == [
        {"metric": "easel_moderation_flags", "item": "input_image", "category": "violence", "key_id": "k1"}
    ]
    flagged = asyncio.run(moderation.screened_upload(red, key(Policy.FLAG)))
    answer = marked({"data": [{"b64_json": "..."}], "scale": 2}, flagged)
    assert answer == {"data": [{"b64_json": "...", "moderation": flagged.inputs.to_api()}], "scale": 2}
    assert answer["data"][0]["moderation"]["categories"] == {"violence": True}
    passed = asyncio.run(moderation.screened_upload(blue, key(Policy.BLOCK)))  # a picture it passes: upscaled, marked
    assert marked({"data": [{}]}, passed)["data"][0]["moderation"]["flagged"] is False
    calls = checker.calls
    unchecked = asyncio.run(moderation.screened_upload(red, None))  # the stack's policy: off
    assert checker.calls == calls and marked({"data": [{}]}, unchecked) == {"data": [{}]}


def test_a_job_runs_under_the_policy_it_was_submitted_under_and_one_stored_without_under_the_stack_s():
    moderation = Moderation(Policy.FLAG, Blocklist.parse(BLOCKLIST))
    request = GenerationRequest(prompt="a gun on a table")
    rescreened = lambda policy, owner: asyncio.run(moderation.rescreened(request, policy, owner))  # noqa: E731
    assert rescreened(Policy.BLOCK, "k1") == Screening(
        Policy.BLOCK, Blocklist.parse(BLOCKLIST).check(request.prompt), "k1"
    )
    assert rescreened(None, None).policy is Policy.FLAG  # a job stored before policies were
    assert rescreened(Policy.OFF, "k1") == Screening(Policy.OFF, key_id="k1")  # nothing checked
