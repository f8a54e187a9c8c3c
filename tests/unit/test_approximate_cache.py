"""Approximate caching across requests, in-process (ONNX Runtime engines, the latent cache in a SQLite file).

The latent store's contract (SQLite here; Redis in ``tests/integration/test_latent_store_redis.py``), which jobs may
use the cache, and the loop: a miss is today's loop and keeps its latents K steps in, a hit starts there and runs the
rest, deterministic for a seed and the cache's contents.
"""

import asyncio
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from serve.errors import InvalidInput, invalid_input
from serve.latent_cache import DEFAULT_SIMILARITY
from serve.latent_cache.sqlite import SqliteLatentStore
from serve.protocol.schema import GenerationRequest
from serve.settings import StackOptions
from serve.text_to_image.approximate import LatentReuse, decide, embedding, skipped_steps
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import CachePolicy, Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.spec import DISTILLED_UNET, UNET
from tests.conftest import psnr
from tests.controls import input_image
from tests.latent_store_contract import *  # noqa: F403 - the contract's tests
from tests.latent_store_contract import ENTRIES
from tests.loop_cases import assert_recorded_bytes, cases
from tests.unit.test_fewer_unet_calls import Counting

SHARE = 0.5
JOB = Generation(
    SamplingParams("a red heart icon", "", 1, 64, 64, 8, 7.5, 3, "ddim"), cache=CachePolicy(approximate=True)
)
NEAR = JOB.replaced(prompt="an icon of a red heart", seed=11)  # another caption of the same pairing
FAR = JOB.replaced(prompt="a blue heart icon", seed=11)  # another colour


@pytest.fixture
def store(tmp_path):
    return SqliteLatentStore(f"sqlite:///{tmp_path / 'easel.db'}", ENTRIES)


@pytest.fixture(scope="module")
def folder(engine_dir):
    return EngineFolder(engine_dir)


def _pipeline(folder: EngineFolder, path: Path, share: float = SHARE) -> tuple[TextToImagePipeline, Counting]:
    """A pipeline whose stack keeps latents ``share`` of the steps in, in a SQLite file at ``path``, rows counted."""
    counting = Counting(OnnxRuntimeRunner(folder))
    reuse = LatentReuse(SqliteLatentStore(f"sqlite:///{path}", 64), share, DEFAULT_SIMILARITY)
    return TextToImagePipeline(folder, counting, reuse), counting


def _run(pipeline: TextToImagePipeline, job: Generation, on_step=None):
    result = asyncio.run(pipeline.generate(job, on_step=on_step))
    return np.stack(result.images), result.steps_skipped


def test_k_is_the_share_of_the_steps_rounded_down_and_never_all_of_them():
    shares_steps = [(0.5, 20), (0.3, 20), (0.3, 4), (0.9, 1)]
    assert [skipped_steps(share, steps) for share, steps in shares_steps] == [10, 6, 1, 0]


def test_who_uses_the_cache_an_explicit_seed_without_opt_in_never_does():
    text, img2img = JOB, JOB.replaced(images=(input_image(64),), strength=0.6)
    assert decide(None, False, text, SHARE, False) and not decide(None, True, text, SHARE, False)
    assert decide(True, True, text, SHARE, False) and not decide(False, False, text, SHARE, False)
    assert not decide(None, False, text, 0.0, False) and not decide(None, False, img2img, SHARE, False)
    assert not decide(None, False, text, SHARE, True)  # an inpainting model
    for job, share, says in [(text, 0.0, "keeps no latents"), (img2img, SHARE, "only text-to-image")]:
        with pytest.raises(InvalidInput, match=says) as refused:
            decide(True, False, job, share, False)
        assert refused.value.field == "approximate_cache"


def test_the_request_field_is_a_strict_boolean_and_the_stack_s_share_and_similarity_are_bounded():
    assert GenerationRequest(prompt="x").approximate_cache is None
    with pytest.raises(ValidationError) as refused:
        GenerationRequest(prompt="x", approximate_cache="yes")
    assert invalid_input(refused.value).field == "approximate_cache"
    for field, value in [("approximate_cache", 1.0), ("approximate_cache", -0.1), ("approximate_similarity", 0)]:
        with pytest.raises(ValidationError, match=field):
            StackOptions(**{field: value})


def test_the_embedding_averages_the_prompt_s_row_over_its_tokens():
    states = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # [negative, prompt] x tokens x width
    expected = states[1].mean(axis=0)
    np.testing.assert_allclose(embedding({"encoder_hidden_states": states}), expected / np.linalg.norm(expected))


def test_off_or_a_miss_gives_the_bytes_of_the_loop_before_it(folder, tmp_path):
    """On a stack that keeps latents: every recorded case without the cache, then with it on an empty cache."""
    pipeline, _ = _pipeline(folder, tmp_path / "easel.db")
    for name, job in cases().items():
        images, skipped = _run(pipeline, job)
        assert_recorded_bytes(images, name)
        assert skipped is None
    for name in ("ddim_20_guided", "euler_8_negative_n2"):
        job = cases()[name].replaced(approximate=True)
        images, skipped = _run(pipeline, job)
        assert_recorded_bytes(images, name)
        assert skipped == 0


def test_a_near_prompt_starts_from_the_kept_latents_k_steps_in(folder, tmp_path):
    pipeline, counting = _pipeline(folder, tmp_path / "easel.db")
    k = skipped_steps(SHARE, JOB.sampling.steps)
    seen = {}

    async def keep(step, _total, latents):
        seen[step] = latents.copy()

    _, skipped = _run(pipeline, JOB, keep)
    assert skipped == 0 and counting.rows[UNET] == 2 * JOB.sampling.steps
    kept = pipeline.reuse.store.nearest(
        next(iter(_shapes(tmp_path / "easel.db"))), _embedding_of(pipeline, JOB)
    ).latents
    np.testing.assert_array_equal(kept, seen[k])  # the miss kept its latents after K steps

    counting.rows.clear()
    steps = []

    async def count(step, total, _latents):
        steps.append((step, total))

    hit, skipped = _run(pipeline, NEAR, count)
    assert skipped == k and counting.rows[UNET] == 2 * (JOB.sampling.steps - k)
    assert steps == [(step, JOB.sampling.steps) for step in range(k + 1, JOB.sampling.steps + 1)]
    again, _ = _run(pipeline, NEAR)
    np.testing.assert_array_equal(hit, again)  # the same seed and cache contents: the same bytes

    other, _ = _pipeline(folder, tmp_path / "other.db")
    _run(other, JOB)
    np.testing.assert_array_equal(_run(other, NEAR)[0], hit)  # another stack, the same history
    far, skipped = _run(other, FAR)
    assert skipped == 0  # another colour is not similar enough
    without, _ = _run(other, NEAR.replaced(approximate=False))
    assert not np.array_equal(without, hit)


@pytest.mark.parametrize(("scheduler", "steps"), [("euler", 8), ("dpmpp_2m", 20)])
def test_a_hit_on_its_own_prompt_and_seed_is_the_full_run_for_schedulers_that_count_their_steps(
    folder, tmp_path, scheduler, steps
):
    """The scheduler resumes at step K (its sigmas, its order's history), not at its first step.

    (DPM-Solver++ 2M at 8 guided steps is unstable on the embedded default: its full run is no reference there.)
    """
    pipeline, _ = _pipeline(folder, tmp_path / "easel.db")
    job = JOB.replaced(scheduler=scheduler, steps=steps)
    full, _ = _run(pipeline, job)
    hit, skipped = _run(pipeline, job)
    assert skipped == skipped_steps(SHARE, job.sampling.steps)
    if scheduler == "euler":  # a one-step method: from the same latents, the same steps
        np.testing.assert_array_equal(hit, full)
    else:  # DPM-Solver++ 2M restarts its history at K: a first-order step there
        assert psnr(hit, full) > 30


def test_an_lcm_hit_ends_denoised_on_the_distilled_unet(folder, tmp_path):
    """LCM adds fresh noise after every step but its last: resumed at K, its last step is still the last."""
    pipeline, counting = _pipeline(folder, tmp_path / "easel.db")
    job = JOB.replaced(scheduler="lcm", steps=4)
    full, _ = _run(pipeline, job)
    hit, skipped = _run(pipeline, job.replaced(seed=12))
    own, _ = _run(pipeline, job.replaced(seed=12, approximate=False))
    assert skipped == 2 and counting.rows[DISTILLED_UNET] == 4 + 2 + 4
    assert psnr(hit, own) > 25 and psnr(hit, full) > 25


def test_a_hit_past_the_guidance_cutoff_runs_unguided_from_the_first_step_it_runs(folder, tmp_path):
    pipeline, counting = _pipeline(folder, tmp_path / "easel.db")
    job = JOB.replaced(guidance_cutoff=0.25)  # guided steps 0-1; K = 4
    _run(pipeline, job)
    assert counting.rows[UNET] == 2 * 2 + 6
    counting.rows.clear()
    _, skipped = _run(pipeline, job.replaced(prompt=NEAR.sampling.prompt))
    assert skipped == 4 and counting.rows[UNET] == 4
    _, skipped = _run(pipeline, JOB.replaced(prompt=NEAR.sampling.prompt))  # another shape: no cut-off
    assert skipped == 0


def _shapes(path: Path) -> set[str]:
    import sqlite3

    return {row[0] for row in sqlite3.connect(path).execute("SELECT shape FROM latent_cache")}


def _embedding_of(pipeline: TextToImagePipeline, job: Generation) -> np.ndarray:
    conditioning, _ = asyncio.run(pipeline.family.condition(pipeline.engines, pipeline.tokenizers, job, True))
    return embedding(conditioning)


def test_another_key_s_kept_latents_are_never_its_start(folder, tmp_path):
    """Per key by default: the same shape and prompt under another key's scope misses; under its own, hits."""
    pipeline, _ = _pipeline(folder, tmp_path / "easel.db")
    _run(pipeline, JOB.replaced(scope="key-a"))
    assert _run(pipeline, NEAR.replaced(scope="key-b"))[1] == 0
    assert _run(pipeline, NEAR.replaced(scope="key-a"))[1] == skipped_steps(SHARE, JOB.sampling.steps)
