"""A remote model: checked and priced by this stack like its own, drawn by another service."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field

import httpx

from serve.adapters.requests import StackAdapters
from serve.errors import InvalidInput, NotReady
from serve.models.admission import DEFAULT_MAX_COST, Checked, Plan, Work
from serve.remote import openai_images
from serve.remote.answer_images import check_images
from serve.remote.settings import DEFAULT_KEY_ENVS, RemoteBackend
from serve.text_to_image.generation import EncodedImages
from serve.text_to_image.images import output_size

logger = logging.getLogger(__name__)

FAMILY = "remote"
"""Its ``family`` in ``GET /v1/models``."""
DROPPED_HEADER = "Easel-Dropped"


@dataclass(frozen=True)
class RemoteModel:
    """``easel up --remote NAME=URL``: a model of the stack's table of names whose images another service draws.

    Its requests are checked here (what it cannot honour: a 400 naming the field, or dropped, as its backend says),
    priced as one pass per step at their size (the stack's ``--max-cost`` bounds it, a key's cost limit counts it),
    guarded by its own circuit breaker and reachable in fallback chains. It has no engines: nothing to load. Its key
    is read only from a variable ``key_envs`` declares (``easel up --remote-key-envs``); its images are checked as an
    input image is (:mod:`serve.remote.answer_images`) before anything of this stack reads them.
    """

    name: str
    backend: RemoteBackend
    max_cost: float = DEFAULT_MAX_COST
    version: int = 1
    adapters: StackAdapters = field(default_factory=StackAdapters)  # none: a LoRA is one of what it cannot honour
    key_envs: tuple[str, ...] = DEFAULT_KEY_ENVS  # the variables its key may be read from (names, PREFIX*)
    # None: the network; a test's recorded answers otherwise (httpx's MockTransport)
    transport: httpx.AsyncBaseTransport | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """What names its images' maker in the result cache and in each image's record: its service and model."""
        where = f"{self.backend.url}|{self.backend.model or ''}|{'+'.join(self.backend.takes)}"
        return "remote-" + hashlib.sha256(where.encode()).hexdigest()[:16]

    @property
    def version_id(self) -> str:
        """Its one version's id."""
        return f"{self.name}.remote"

    @property
    def native_size(self) -> int:
        """The side its images are priced at when a request gives no size."""
        return self.backend.native_size

    @property
    def takes_seed(self) -> bool:
        """Whether its service is sent a seed (``takes``): a job for it draws none at submission otherwise."""
        return "seed" in self.backend.takes

    def dropped(self, request) -> tuple[str, ...]:
        """The fields it draws ``request`` without (its backend drops what it cannot honour)."""
        return openai_images.unsupported(request, self.backend) if self.backend.unsupported == "drop" else ()

    def check(self, request, owner: str | None = None) -> Checked:
        """``request`` checked (a 400 naming the field it cannot honour, or over the cost limit) and priced."""
        for name in openai_images.unsupported(request, self.backend):
            if self.backend.unsupported == "refuse" or name in openai_images.NEVER_DROPPED:
                why = f"{name}: model {self.name} is drawn by a remote service, which does not take {name}"
                raise InvalidInput(why, name)
        width, height = output_size(request, self.native_size)
        work = Work(request.n, request.num_inference_steps, width, height)
        if work.cost > self.max_cost:
            why = f"the cost, {work.explained()}, is over the limit of {self.max_cost:g} (easel up --max-cost)"
            raise InvalidInput(f"{work.cost_field}: {why}", work.cost_field)
        return Checked(work, Plan(work.cost))

    def drawn(self, request):
        """``request`` as it is drawn: what its backend drops (``unsupported=drop``) set back to its default."""
        fields = type(request).model_fields
        return request.model_copy(
            update={name: fields[name].get_default(call_default_factory=True) for name in self.dropped(request)}
        )

    async def generate(self, request, seed: int) -> EncodedImages:
        """``request``'s images drawn with ``seed`` (the door's) by its service (what it cannot honour dropped).

        Each image decodes within the size the request asked (else its native size), else a 502 naming the model;
        a key it may not read (its variable undeclared, or unset since the start) is a 503 that no retry mends.
        """
        try:
            key = self.backend.api_key(self.key_envs)
        except ValueError as error:
            logger.error("model %s: its key cannot be read: %s", self.name, error)
            why = f"model: {self.name} cannot be called: its key is not available to this stack (an operator's setting)"
            raise NotReady(why, "model", retry_after_s=None) from None
        drawn = await openai_images.generate(request, self.backend, seed, self.name, key, self.transport)
        width, height = output_size(request, self.native_size)
        await asyncio.to_thread(check_images, drawn.images, self.name, width, height)
        return drawn

    def headers(self, request) -> dict[str, str]:
        """Its answer's headers: the model, and the fields dropped (``Easel-Dropped``), if any."""
        dropped = self.dropped(request)
        return {"Easel-Model": self.name} | ({DROPPED_HEADER: ",".join(dropped)} if dropped else {})

    def public(self, loaded: bool = True) -> dict:
        """``GET /v1/models``' entry, in the shape of a served model's (nothing to load: always loaded)."""
        size = self.native_size
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "easel",
            "family": FAMILY,
            "native_size": f"{size}x{size}",
            "loaded": loaded,
            "loras": False,
            "ip_adapter": False,
            "ip_adapters": [],
            "ip_adapter_kinds": {},
            "controlnets": [],
            "takes_images": False,
            "version": self.version,
        }
