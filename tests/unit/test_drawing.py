"""The generation admission types (:class:`serve.text_to_image.drawing.Drawing`): what the replica runs, the key."""

import pickle

from serve.protocol.schema import GenerationRequest
from serve.text_to_image.drawing import Drawing
from tests.controls import b64, input_image


def test_a_drawing_is_one_seeded_job_per_prompt_without_pixels_and_crosses_to_a_replica():
    body = {"prompts": [{"prompt": "a red heart"}, {"prompt": "a blue star", "seed": 40}], "n": 2, "seed": 7}
    request = GenerationRequest.model_validate(body | {"size": "64x64", "scheduler": "euler"})
    drawing = Drawing.of(request, 64, 64, request.seed)
    assert [(job.sampling.prompt, job.sampling.seed, job.sampling.n) for job in drawing.jobs] == [
        ("a red heart", 7, 2),
        ("a blue star", 40, 2),
    ]
    assert drawing.asked_seeds == (7, 40) and drawing.answer.prompted and drawing.answer.rows_per_prompt == 2
    assert all(not job.inputs.images and job.inputs.mask is None for job in drawing.jobs)  # decoded by the replica
    assert pickle.loads(pickle.dumps(drawing)) == drawing  # as Ray hands it to the replica


def test_its_identity_names_images_by_content_and_a_drawn_seed_is_never_a_cache_key():
    picture, other = b64(input_image(64)), b64(input_image(72))
    request = GenerationRequest(prompt="x", image=[picture], seed=3)
    identity = Drawing.of(request, 64, 64, 3).identity()
    assert picture not in str(identity) and identity["sources"]["images"][0].startswith("sha256:")
    assert identity != Drawing.of(request.model_copy(update={"image": [other]}), 64, 64, 3).identity()
    unseeded = GenerationRequest(prompt="x")
    assert Drawing.of(unseeded, 64, 64, 5).identity() is None  # its seed drawn at the door: asked by no one
    prompts = GenerationRequest.model_validate({"prompts": [{"prompt": "a"}, {"prompt": "b", "seed": 1}]})
    assert Drawing.of(prompts, 64, 64, 5).asked_seeds == (None, 1)
