import pytest
from pydantic import ValidationError

from serve.errors import invalid_input
from serve.protocol.schema import MAX_IMAGES, MAX_STEPS, GenerationRequest
from serve.protocol.sizes import MAX_SIDE


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        ({"prompt": ""}, "prompt", "at least 1"),
        ({"prompt": "   "}, "prompt", "non-space"),
        ({"prompt": "x", "n": 0}, "n", "1"),
        ({"prompt": "x", "n": MAX_IMAGES + 1}, "n", str(MAX_IMAGES)),
        ({"prompt": "x", "size": "250x256"}, "size", "multiples of 8"),
        ({"prompt": "x", "size": f"{MAX_SIDE + 8}x256"}, "size", str(MAX_SIDE)),
        ({"prompt": "x", "size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps", "1"),
        ({"prompt": "x", "num_inference_steps": MAX_STEPS + 1}, "num_inference_steps", str(MAX_STEPS)),
        ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale", "finite"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale", "0"),
        ({"prompt": "x", "scheduler": "plms"}, "scheduler", "ddim"),
        ({"prompt": "x", "output_format": "bmp"}, "output_format", "png"),
        ({"prompt": "x", "response_format": "link"}, "response_format", "url"),
        ({"prompt": "x", "output_compression": 50}, "output_compression", "jpeg or webp"),
        ({"prompt": "x", "output_format": "jpeg", "output_compression": 101}, "output_compression", "100"),
        ({"prompt": "x", "metadata": "some"}, "metadata", "none"),
        ({"prompt": "x", "seed": -1}, "seed", "0"),
        ({"prompt": "x", "output_format": "svg", "vectorize_tier": "4"}, "vectorize_tier", "auto"),
        ({"prompt": "x", "vectorize_tier": "2"}, "vectorize_tier", "output_format 'svg'"),
        ({"prompt": "x", "steps": 5}, "steps", "not permitted"),
        ({"prompt": "x", "size": "256x256\n"}, "size", "WIDTHxHEIGHT"),
        ({"prompt": "x", "size": "\uff12\uff15\uff16x256"}, "size", "WIDTHxHEIGHT"),  # full-width digits
        ({"prompt": "x", "seed": "7"}, "seed", "valid integer"),
        ({"prompt": "x", "seed": 2**63}, "seed", "9223372036854775807"),
        ({"prompt": "x", "n": True}, "n", "valid integer"),
        ({"prompt": "x", "num_inference_steps": 2.5}, "num_inference_steps", "valid integer"),
        ({"prompt": "x", "guidance_scale": "7"}, "guidance_scale", "valid number"),
        ({"prompt": "x", "background": "true"}, "background", "valid boolean"),
        ({"prompt": "x", "loras": [{"name": "a", "scale": float("nan")}]}, "loras", "finite"),
        ({"prompt": "x", "loras": [{"name": "a", "scale": 4.5}]}, "loras", "4"),
        ({"prompt": "x", "loras": [{"name": "a"}, {"name": "a"}]}, "loras", "once"),
        ({"prompt": "x", "loras": [{"name": str(i)} for i in range(5)]}, "loras", "4"),
        ({"prompt": "x", "loras": [{"name": ""}]}, "loras", "at least 1"),
        ({"prompt": "x", "ip_adapter_image": "not base64!"}, "ip_adapter_image", "base64"),
        ({"prompt": "x", "ip_adapter_image": "aGk=", "ip_adapter_scale": float("inf")}, "ip_adapter_scale", "[0, 2]"),
        ({"prompt": "x", "ip_adapter_image": "aGk=", "ip_adapter_scale": {"side": 1}}, "ip_adapter_scale", "'up'"),
        ({"prompt": "x", "ip_adapter_scale": 0.5}, "ip_adapter_scale", "ip_adapter_image"),
        ({"prompt": "x", "candidates": 9}, "candidates", "8"),
        ({"prompt": "x", "candidates": 0}, "candidates", "1"),
        ({"prompt": "x", "candidates": 2, "best_of": "sharpness"}, "best_of", "clip_score"),
        ({"prompt": "x", "candidates": 2, "image": ["aGk="]}, "candidates", "input image"),
        ({"prompt": "x", "candidates": 2, "approximate_cache": True}, "candidates", "approximate_cache"),
    ],
)
def test_bad_fields_are_named_with_their_limit(body, field, limit):
    with pytest.raises(ValidationError) as info:
        GenerationRequest(**body)
    error = info.value.errors()[0]
    assert invalid_input(info.value).field.split(".")[0] == field  # the 400's param: a check across fields names it
    assert limit in error["msg"] or limit in str(error.get("ctx", ""))


def test_defaults_and_openai_fields_are_accepted():
    request = GenerationRequest(prompt="a fox", model="dall-e-3", size="512x256", user="u1")
    assert request.width_height(64) == (512, 256)
    assert GenerationRequest(prompt="a fox").width_height(64) == (64, 64)
    assert request.response_format == "b64_json" and request.n == 1 and request.scheduler == "ddim"


def test_svg_output_takes_an_optional_vectorize_tier():
    assert GenerationRequest(prompt="x", output_format="svg").vectorize_tier is None
    assert GenerationRequest(prompt="x", output_format="svg", vectorize_tier="2").vectorize_tier == "2"


def test_the_schema_s_seed_limit_is_an_exact_integer():
    seed = GenerationRequest.model_json_schema()["properties"]["seed"]["anyOf"][0]
    assert seed["maximum"] == 2**63 - 1 and isinstance(seed["maximum"], int)
    assert GenerationRequest(prompt="x", seed=2**63 - 1, guidance_scale=7).guidance_scale == 7.0  # an int is a number
