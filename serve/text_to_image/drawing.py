"""A generation as admission builds it, all but the pixels: what the replica runs and the result cache is keyed by.

The door admits a request once (:meth:`serve.serving.generations.Generations.admitted`) and builds its
:class:`Drawing` there: one typed :class:`~serve.text_to_image.generation.Generation` per prompt (its seed drawn, its
size read from the images' headers), its images as sent (:class:`~serve.text_to_image.images.ImageSources`, decoded
by the replica that runs it) and how its images are answered (:class:`AnswerForm`). The ``TextToImage`` replica takes
the drawing and its plan, never the API request; the result cache's key is the drawing's :meth:`~Drawing.identity`.
What the stack leaves to its own defaults (a guidance cut-off, the approximate cache) the replica, which holds them,
decides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pydantic import BaseModel

from serve.finishing.schema import RestoreFaces, UpscaleChoice
from serve.priority import Priority
from serve.protocol.best_of import candidate_seeds
from serve.text_to_image.generation import CachePolicy, Generation, ImageInputs, SamplingParams
from serve.text_to_image.images import ImageSources
from serve.text_to_image.video import motion_of


@dataclass(frozen=True)
class AnswerForm:
    """How a generation's images are answered: encoded, scored, chosen among candidates, finished, by prompt."""

    output_format: str = "png"  # svg: PNGs the Vectorizer traces
    output_compression: int | None = None
    vectorize_tier: str | None = None
    scores: bool = False
    candidates: int = 1
    best_of: str = "clip_score"
    rows_per_prompt: int = 1  # images answered for each prompt
    prompted: bool = False  # it gave ``prompts``: each image names its ``prompt_index``
    upscale: UpscaleChoice | None = None
    restore_faces: RestoreFaces | None = None
    character_face: tuple[float, ...] | None = None  # each image's scores.identity is against it

    @property
    def raster_format(self) -> str:
        """The encoding the replica answers with (svg's images are PNGs, for the Vectorizer)."""
        return "png" if self.output_format == "svg" else self.output_format

    def prompt_index(self, index: int) -> int:
        """The prompt that made image ``index`` of the answer (its images go prompt by prompt)."""
        return index // self.rows_per_prompt

    def prompts_named(self, items: list[dict]) -> list[dict]:
        """An answer's ``data`` items, each with its ``prompt_index`` where the request gave ``prompts``."""
        if self.prompted:
            for index, item in enumerate(items):
                item["prompt_index"] = self.prompt_index(index)
        return items


ANSWER_FIELDS = dataclasses.fields(AnswerForm)
"""How an answer is formed; a request's fields of the same names say it (:meth:`Drawing.of`), the rest is derived."""


@dataclass(frozen=True)
class Drawing:
    """A generation admitted, typed, all but its pixels: one job per prompt, its images as sent, its answer's form.

    ``seed``: the answer's (the request's, else drawn at the door; prompt ``i``'s own, or ``seed + i``);
    ``asked_seeds``: each job's as the request gave it (None: drawn), whether it may be cached and start from kept
    latents; ``guidance_cutoff`` and ``approximate``: as asked (None: the stack's, which the replica holds);
    ``loras``: their names as asked (its metrics, the error of a diverged run), their files are its plan's.
    """

    jobs: tuple[Generation, ...]
    seed: int
    asked_seeds: tuple[int | None, ...]
    sources: ImageSources = ImageSources()
    answer: AnswerForm = AnswerForm()
    guidance_cutoff: float | None = None
    approximate: bool | None = None
    loras: tuple[str, ...] = ()
    kind: str = "text"  # what it asks (the metrics' kind): text, img2img, inpaint or outpaint

    @classmethod
    def of(cls, request, width: int, height: int, seed: int, face: tuple[float, ...] | None = None) -> Drawing:
        """``request`` (an API ``GenerationRequest``, a video's too) drawn at ``width`` x ``height`` from ``seed``.

        ``face``: the face of the character it names (its images' ``scores.identity``), found at admission.
        """
        singles = request.singles(seed)  # one-prompt requests, each with its seed
        said = [field.name for field in ANSWER_FIELDS if field.name in type(request).model_fields]
        asked = {name: getattr(request, name) for name in said}
        rows_per_prompt, prompted = request.rows // request.prompt_count, request.prompts is not None
        answer = AnswerForm(**asked, rows_per_prompt=rows_per_prompt, prompted=prompted, character_face=face)
        return cls(
            jobs=tuple(_job(single, width, height) for single in singles),
            seed=seed,
            asked_seeds=_asked_seeds(request, singles),
            sources=ImageSources.of(request),
            answer=answer,
            guidance_cutoff=request.guidance_cutoff,
            approximate=request.approximate_cache,
            loras=tuple(choice.name for choice in request.loras),
            kind=_kind(request),
        )

    @property
    def priority(self) -> Priority:
        """Its turn in the replica's in-flight capacity and in Triton's queues."""
        return self.jobs[0].priority

    @property
    def sampling(self) -> SamplingParams:
        """Its first prompt's sampling (every prompt's but for the prompt and seed)."""
        return self.jobs[0].sampling

    @property
    def made_with(self) -> tuple[list[str], str]:
        """What its images are recorded as made with beside the model (a rating counts to each): LoRAs, sampler."""
        return list(self.loras), self.sampling.scheduler

    def identity(self) -> dict | None:
        """What shapes its answer, as JSON (images by their content's SHA-256): the result cache's key material.

        None: not to be cached: a seed drawn at the door (an answer no one can ask again), or an SVG answer (it may
        be a fallback of the moment: vectorize models unavailable).
        """
        if None in self.asked_seeds or self.answer.output_format == "svg":
            return None
        jobs = [dataclasses.replace(job, priority=Priority.NORMAL) for job in self.jobs]  # its turn shapes nothing
        shaping = dataclasses.replace(self, jobs=tuple(jobs), sources=self.sources.hashed(), loras=())
        return _json(dataclasses.asdict(shaping))


def _json(value):
    """``value`` (dataclasses already dicts) as JSON values: pydantic models dumped, tuples as lists."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(key): _json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json(item) for item in value]
    return value  # a Priority is a str


def _job(single, width: int, height: int) -> Generation:
    """A one-prompt request's job, its images left to decode (their strength set)."""
    seed, rows = single.seed, single.drawn_rows
    sampling = SamplingParams(
        prompt=single.prompt,
        negative_prompt=single.negative_prompt,
        n=rows,
        width=width,
        height=height,
        steps=single.num_inference_steps,
        guidance_scale=single.guidance_scale,
        seed=seed,
        scheduler=single.scheduler,
        seeds=candidate_seeds(seed, rows) if single.candidates > 1 else (),  # best-of-n: each row its own
    )
    return Generation(
        sampling=sampling,
        priority=single.priority,
        inputs=ImageInputs(strength=single.effective_strength),
        cache=CachePolicy(interval=single.cache_interval),
        motion=motion_of(single),  # a video's frames
    )


def _asked_seeds(request, singles: list) -> tuple[int | None, ...]:
    """Each prompt's seed as the request gives it (its own, else the request's + its index); None: none given.

    ``singles``: its one-prompt requests (:meth:`~serve.protocol.prompt_batch.PromptBatch.singles`).
    """
    if request.seed is not None:  # every prompt's follows from it
        return tuple(single.seed for single in singles)
    return (None,) if request.prompts is None else tuple(choice.seed for choice in request.prompts)


def _kind(request) -> str:
    """What a request asks (the metrics' ``kind``): text, img2img, inpaint or outpaint."""
    if request.outpaint is not None:
        return "outpaint"
    if request.mask is not None:
        return "inpaint"
    return "img2img" if request.image else "text"
