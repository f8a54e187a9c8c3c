"""What a request priced by its own work costs, read from the request alone: no pixel decoded, nothing run.

A moderation by its texts' characters and its images' pixels (:func:`moderation_cost`), a stored reference by its
image's decode and encode (:func:`reference_cost`), a character by its pictures' (:func:`character_cost`), a score by
each image's pixels (:func:`score_cost`), a prompt analysis by its tokens and its moderation verdict
(:func:`analysis_cost`), a vectorize request by its image's pixels and the passes its tier may run
(:func:`vectorize_cost`). A generation's price is its model's (:meth:`serve.models.served.ServedModel.work`), an
upscale's :meth:`serve.serving.upscale.Upscaling.work`.
Admission (:class:`serve.serving.admission.Admission`) takes them from the caller's key; each route's price is a row
of docs/guides/keys-and-limits.md ("What each route costs").

Costs are megapixel-passes (:class:`serve.models.admission.Work`): a 512x512 image through one pass is 0.26.
Images are priced from their headers (:func:`serve.images.raster.header_size`, its 400 or 413 naming the field).
"""

from __future__ import annotations

from serve.faces.pack import DETECTION_SIDE
from serve.images import base64_bytes
from serve.images.raster import MAX_PIXELS, header_size
from serve.moderation.requests import ModerationRequest
from serve.protocol.character_requests import NewCharacter
from serve.protocol.face_requests import FaceAnalysisRequest
from serve.protocol.quality_requests import PromptAnalysisRequest, ScoreRequest
from serve.protocol.reference_request import NewReference
from serve.text_to_image.images import header_size as input_header_size
from serve.vectorize.schema import Preference, Tier, VectorizeOptions

ENCODER_MEGAPIXELS = 224 * 224 / 1e6
"""One pass of a CLIP image encoder (the image checker's, the IP-Adapter's, the scorer's): its input is 224 x 224."""
CHARACTERS_PER_COST = 100_000
"""Moderated text as the price counts it: 100,000 characters cost 1 (32 texts of 32,000 characters: 10.2)."""
TOKENS_PER_COST = 100_000
"""Tokenized text as the price counts it: 100,000 tokens cost 1."""
VECTORIZE_ANALYSIS_PASSES = 2
"""``POST /v1/vectorize/analyze``: the image decoded, and the vectorize models' one ensemble pass over it."""
CHECK_PASSES = 5
"""A model tier's conversion checked against vtracer's defaults (:func:`serve.vectorize.tiers.answer`): its SVG
rendered back, the defaults' conversion and render, then tier 1's (the runner-up) conversion and render."""


def moderation_cost(body: ModerationRequest) -> float:
    """Its texts' characters, + each image's decoded megapixels and one checker pass (400: one that is no image)."""
    cost = 0.0
    for i, item in enumerate(body.items()):
        if isinstance(item, str):
            cost += len(item) / CHARACTERS_PER_COST
        else:
            width, height = header_size(item, f"input.{i}.image_url.image_url.url", MAX_PIXELS)
            cost += width * height / 1e6 + ENCODER_MEGAPIXELS
    return cost


def reference_cost(body: NewReference) -> float:
    """Its image's decoded megapixels and one image-encoder pass (as a generation's ``ip_adapter_image`` counts it)."""
    width, height = input_header_size(base64_bytes(body.image), "image")
    return width * height / 1e6 + ENCODER_MEGAPIXELS


def identity_cost(image: str, face_side: int) -> float:
    """An ``identity.image``'s decoded megapixels, one detector pass and its face's recognizer pass.

    Refused from its header as an input image is (a 400 or 413 naming ``identity.image``).
    """
    width, height = input_header_size(base64_bytes(image), "identity.image")
    return width * height / 1e6 + DETECTION_SIDE**2 / 1e6 + face_side**2 / 1e6


def character_cost(body: NewCharacter, face_side: int | None) -> float:
    """Each picture's decoded megapixels and one image-encoder pass; with face models (``face_side``), their passes.

    A picture's faces: one detector pass and one recognizer pass (its face's). Refused as a reference's image is.
    """
    cost = 0.0
    for i, image in enumerate(body.images):
        width, height = input_header_size(base64_bytes(image), f"images.{i}")
        cost += width * height / 1e6 + ENCODER_MEGAPIXELS
        if face_side is not None:
            cost += DETECTION_SIDE**2 / 1e6 + face_side**2 / 1e6
    return cost


def face_analysis_cost(body: FaceAnalysisRequest, face_side: int) -> float:
    """Its image's decoded megapixels, one detector pass and a recognizer pass for each face it may report.

    An image over :data:`~serve.images.raster.MAX_PIXELS` is a 413 naming ``image``, one that is no image a 400:
    refused before any pixel is decoded.
    """
    width, height = header_size(base64_bytes(body.image), "image", MAX_PIXELS)
    return width * height / 1e6 + DETECTION_SIDE**2 / 1e6 + body.max_faces * face_side**2 / 1e6


def score_cost(body: ScoreRequest) -> float:
    """Each image's decoded megapixels and one pass of the scorer's CLIP image encoder, from its header.

    An image over :data:`~serve.images.raster.MAX_PIXELS` (4,194,304) or 4096 a side is a 413 naming ``images.N``,
    one that is no image a 400 naming it: refused before any pixel is decoded.
    """
    cost = 0.0
    for i, image in enumerate(body.images):
        width, height = header_size(base64_bytes(image), f"images.{i}", MAX_PIXELS)
        cost += width * height / 1e6 + ENCODER_MEGAPIXELS
    return cost


def analysis_cost(body: PromptAnalysisRequest, encoders: int) -> float:
    """Its tokens for each of the model's ``encoders``, + its moderation verdict as ``/v1/moderations`` prices it.

    A text's tokens are counted as its UTF-8 bytes (its prompt's and its negative prompt's), the most a byte-level
    tokenizer makes of them, before any is tokenized; the verdict is :func:`moderation_cost` of what it checks
    (:attr:`~serve.protocol.quality_requests.PromptAnalysisRequest.moderated`).
    """
    tokens = len(body.prompt.encode()) + len(body.negative_prompt.encode())
    return encoders * tokens / TOKENS_PER_COST + moderation_cost(body.moderated)


def vectorize_passes(options: VectorizeOptions, analysis: bool = False) -> int:
    """The passes over its image a vectorize request may run: a decode, the models' pass, conversions and renders.

    ``analysis``: ``/v1/vectorize/analyze`` (a decode and the models' pass: :data:`VECTORIZE_ANALYSIS_PASSES`). A
    conversion is one vtracer run, a render one SVG rendered back for its SSIM (:mod:`serve.vectorize.tiers`). Tier
    ``default`` runs no models: a decode and a conversion, + a render with ``validate``. A model tier (1, 2, 3, auto)
    runs the models and a conversion; with ``prefer: quality`` and no ``target_quality`` its conversion may be checked
    against the defaults (:data:`CHECK_PASSES` more, its SSIM then measured); otherwise ``validate`` adds
    a render, and under ``target_quality`` the defaults' conversion and render too.
    """
    if analysis:
        return VECTORIZE_ANALYSIS_PASSES
    validate = int(options.validate_output)
    if options.tier is Tier.DEFAULT:
        return 2 + validate
    if options.prefer is Preference.QUALITY and options.target_quality is None:
        return 3 + CHECK_PASSES  # the most it runs: checked, its SSIM is measured (validate adds nothing)
    return 3 + validate * (1 + 2 * (options.target_quality is not None))


def vectorize_cost(data: bytes, options: VectorizeOptions, analysis: bool = False) -> float:
    """The image's megapixels (its header: a 413 naming ``image`` over 4,194,304 pixels) x :func:`vectorize_passes`."""
    width, height = header_size(data, "image", MAX_PIXELS)
    return width * height / 1e6 * vectorize_passes(options, analysis)
