"""Prompts as users write them: AUTOMATIC1111's weighting and long prompts in chunks, against the references.

Weighting against AUTOMATIC1111's published algorithm (``modules/sd_hijack_clip.py``: each token's state times its
weight, the chunk rescaled to its mean before) run here on the transformers encoder; long prompts against compel's
chunked embeddings (``truncate_long_prompts=False``, ``SplitLongTextMode.BRUTAL``), and through the whole loop against
diffusers' pipeline given those embeddings.
"""

import asyncio
import re

import numpy as np
import pytest
import torch

from serve.errors import InvalidInput
from serve.protocol.prompt_weights import MAX_WEIGHT, parse_weighted
from serve.protocol.schema import GenerationRequest
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.prompt_chunks import PromptChunks
from serve.text_to_image.spec import MAX_PROMPT_CHUNKS
from tests.conftest import psnr, reference_images


def weights_of(text: str) -> list[tuple[str, float]]:
    return [(fragment.text, round(fragment.weight, 6)) for fragment in parse_weighted(text)]


def test_parses_as_automatic1111():
    """AUTOMATIC1111's own examples (parse_prompt_attention's docstring), its unbalanced one closed here."""
    assert weights_of("normal text") == [("normal text", 1.0)]
    assert weights_of("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert weights_of("\\(literal\\]") == [("(literal]", 1.0)]
    assert weights_of("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    assert weights_of("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).)") == [
        ("a ", 1.0),
        ("house", 1.573),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641),
        (".", 1.1),
    ]
    assert weights_of("(red:1.5) heart") == [("red", 1.5), (" heart", 1.0)]
    assert weights_of("[blurry:0]") == [("blurry:0", round(1 / 1.1, 6))]  # a weight closes round brackets only


@pytest.mark.parametrize(
    ("field", "text", "says"),
    [
        ("prompt", "(unbalanced", "never closed"),
        ("prompt", "a heart)", "closes no '('"),
        ("negative_prompt", "[a (b] c)", "closes no '['"),
        ("prompt", "(red:10.5) heart", f"outside [0, {MAX_WEIGHT:g}]"),
        ("prompt", "(red:-1) heart", "outside"),
        ("negative_prompt", "(red:1.2.3)", "is not a number"),
        ("prompt", "(" * 25 + "a" + ")" * 25, "a nested weight of 10.8"),
    ],
)
def test_bad_weighting_is_a_400_naming_the_field(field, text, says):
    body = {"prompt": "x", field: text}
    with pytest.raises(InvalidInput, match=re.escape(says)) as error:
        GenerationRequest(**body)
    assert error.value.field == field and error.value.status == 400


@pytest.fixture(scope="module")
def sd(engine_dir):
    folder = EngineFolder(engine_dir)
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


@pytest.fixture(scope="module")
def xl(tiny_xl_engine_dir):
    folder = EngineFolder(tiny_xl_engine_dir)
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


def conditioning(pipeline, prompt: str, negative: str = "", guidance: float = 1.0) -> dict[str, np.ndarray]:
    job = Generation(SamplingParams(prompt, negative, 1, 64, 64, 1, guidance, 1, "ddim"))
    rows, _ = asyncio.run(pipeline.family.condition(pipeline.engines, pipeline.tokenizers, job, guidance > 1.0))
    return rows


def test_weighting_equals_automatic1111s_algorithm(sd, diffusers_pipeline):
    """``(red:1.5) heart``: A1111's emphasis on the transformers encoder's states, within 1e-5."""
    tokenizer, encoder = diffusers_pipeline.tokenizer, diffusers_pipeline.text_encoder
    length = tokenizer.model_max_length
    red, heart = (tokenizer(text, add_special_tokens=False).input_ids for text in ("red", " heart"))
    tokens = [tokenizer.bos_token_id, *red, *heart, tokenizer.eos_token_id]
    ids = tokens + [tokenizer.pad_token_id] * (length - len(tokens))
    multipliers = torch.tensor([1.0] + [1.5] * len(red) + [1.0] * (length - 1 - len(red)))
    with torch.no_grad():
        z = encoder(torch.tensor([ids]))[0]
    original_mean = z.mean()
    z = z * multipliers.reshape(1, -1, 1)
    z = z * (original_mean / z.mean())  # EmphasisOriginal.after_transformers
    got = conditioning(sd, "(red:1.5) heart")["encoder_hidden_states"]
    assert got.shape == z.shape
    np.testing.assert_allclose(got, z.numpy(), atol=1e-5, rtol=0)
    plain = conditioning(sd, "red heart")["encoder_hidden_states"]
    assert np.abs(got - plain).max() > 1e-2  # the weight changed the states


def test_escaped_brackets_stay_literal(sd, diffusers_pipeline):
    """``\\(literal\\)`` is encoded as diffusers encodes the text ``(literal)``, unweighted."""
    got = conditioning(sd, "\\(literal\\)")["encoder_hidden_states"]
    with torch.no_grad():
        want, _ = diffusers_pipeline.encode_prompt("(literal)", "cpu", 1, False)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def long_prompt(tokenizer, tokens: int) -> str:
    """Words until the prompt is ``tokens`` tokens long (no BOS/EOS) in ``tokenizer``."""
    words = "a red heart icon with a blue star on a flat green hill under the sun".split()
    text = ""
    for index in range(10 * tokens):
        longer = f"{text} {words[index % len(words)]}".strip()
        if len(tokenizer(longer, add_special_tokens=False).input_ids) > tokens:
            return text
        text = longer
    raise AssertionError("no prompt that long")


def compel_sd(pipeline):
    from compel import Compel, SplitLongTextMode

    return Compel(
        tokenizer=pipeline.tokenizer,
        text_encoder=pipeline.text_encoder,
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.BRUTAL,
    )


def test_a_200_token_prompt_on_sd_is_compels_chunks(sd, diffusers_pipeline):
    """The prompt and the negative (padded with the empty prompt's chunk) as compel encodes and pads them."""
    compel = compel_sd(diffusers_pipeline)
    prompt = long_prompt(diffusers_pipeline.tokenizer, 200)
    with torch.no_grad():
        want = compel.pad_conditioning_tensors_to_same_length([compel(["blurry"]), compel([prompt])])
    got = conditioning(sd, prompt, "blurry", guidance=7.5)["encoder_hidden_states"]
    chunk = diffusers_pipeline.tokenizer.model_max_length
    assert got.shape[1] == chunk * -(-200 // (chunk - 2)) == want[1].shape[1]
    np.testing.assert_allclose(got, torch.cat(want).numpy(), atol=1e-5, rtol=0)


def test_a_200_token_prompt_on_sdxl_is_compels_chunks(xl, diffusers_xl_pipeline):
    """Both encoders' penultimate states in chunks side by side, the pooled embedding the first chunk's."""
    from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode

    p = diffusers_xl_pipeline
    compel = Compel(
        tokenizer=[p.tokenizer, p.tokenizer_2],
        text_encoder=[p.text_encoder, p.text_encoder_2],
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=[False, True],
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.BRUTAL,
    )
    prompt = long_prompt(p.tokenizer, 200)
    with torch.no_grad():
        hidden, pooled = compel([prompt])
    got = conditioning(xl, prompt)
    assert got["encoder_hidden_states"].shape[1] > p.tokenizer.model_max_length
    np.testing.assert_allclose(got["encoder_hidden_states"], hidden.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["text_embeds"], pooled.numpy(), atol=1e-5, rtol=0)


def test_a_long_prompt_draws_what_diffusers_draws_from_its_chunks(sd, diffusers_pipeline):
    """The UNet takes the chunks (its text axis is dynamic): the image is diffusers' given compel's embeddings."""
    compel = compel_sd(diffusers_pipeline)
    prompt = long_prompt(diffusers_pipeline.tokenizer, 60)
    with torch.no_grad():
        negative, positive = compel.pad_conditioning_tensors_to_same_length([compel([""]), compel([prompt])])
    result = asyncio.run(sd.generate(Generation(SamplingParams(prompt, "", 1, 64, 64, 4, 7.5, 3, "ddim"))))
    want = reference_images(
        diffusers_pipeline,
        "ddim",
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        seed=3,
    )
    assert result.prompt_tokens_dropped == 0
    assert psnr(np.stack(result.images), want) >= 40


def test_past_the_most_chunks_is_cut_and_counted(sd):
    tokenizer = sd.tokenizers["tokenizer"]
    length = sd.dims.text_length
    body = length - 2
    prompt = long_prompt(tokenizer, body * MAX_PROMPT_CHUNKS + 5)
    chunks = PromptChunks(tokenizer, [prompt], length)
    assert (chunks.count, chunks.dropped) == (MAX_PROMPT_CHUNKS, 5)
    rows = conditioning(sd, prompt)["encoder_hidden_states"]
    assert rows.shape[1] == length * MAX_PROMPT_CHUNKS


def test_the_analysis_says_what_each_encoder_reads_and_what_a_generation_would_cut(engine_dir):
    """``POST /v1/prompts/analyze``'s class: weights, tokens and chunks per encoder, the cut, the verdict."""
    from serve.models.served import ServedModels
    from serve.protocol.quality_requests import PromptAnalysisRequest
    from serve.serving.current_models import CurrentModels
    from serve.serving.moderation import Moderation
    from serve.serving.prompts import PromptAnalysis

    served = ServedModels.open({"default": str(engine_dir)}, remotes={"far": {"url": "http://127.0.0.1:9"}})
    analysis = PromptAnalysis(CurrentModels(served), Moderation())
    body = PromptAnalysisRequest(prompt="a (red:1.5) [heart] \\(icon\\)", negative_prompt="blurry")
    answer = asyncio.run(analysis.analyze(body, None))
    assert answer["encoders"] == {"text_encoder": {"chunk_tokens": 14, "max_chunks": MAX_PROMPT_CHUNKS}}
    weights = [(w["text"], w["weight"]) for w in answer["prompt"]["weights"]]
    assert weights == [("a ", 1.0), ("red", 1.5), (" ", 1.0), ("heart", round(1 / 1.1, 6)), (" (icon)", 1.0)]
    assert answer["prompt"]["encoders"]["text_encoder"] == {"tokens": 6, "chunks": 1, "truncated": 0}
    assert answer["truncated"] == 0 and answer["moderation"]["policy"] == "off"
    long = asyncio.run(analysis.analyze(PromptAnalysisRequest(prompt="red heart icon " * 100), None))
    assert long["truncated"] == 300 - 14 * MAX_PROMPT_CHUNKS
    assert long["prompt"]["encoders"]["text_encoder"]["chunks"] == MAX_PROMPT_CHUNKS
    with pytest.raises(InvalidInput, match="unknown model") as error:
        asyncio.run(analysis.analyze(PromptAnalysisRequest(prompt="x", model="nope"), None))
    assert error.value.field == "model"
    with pytest.raises(InvalidInput, match="'far' is a remote model") as error:  # its service reads its prompts
        asyncio.run(analysis.analyze(PromptAnalysisRequest(prompt="x", model="far"), None))
    assert error.value.field == "model"
