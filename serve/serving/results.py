"""Results as data at the Gateway: generated images kept with what made them, answered as base64 or a signed URL.

An image is shown to its owner's key, by its URL to anyone holding it, and listed in its owner's history. Every
generation's images pass :meth:`Results.delivered` (HTTP, jobs and gRPC alike): each PNG gets its record
(:mod:`serve.results.record`), each image is kept (:class:`serve.results.ImageStore`, under its key's quota: the key's
own, else the stack's) and, asked for, its URL made.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi.responses import Response
from PIL import Image

from serve import metrics
from serve.access import open_key_store, owner_filter
from serve.access.keys import ApiKey
from serve.errors import InvalidInput
from serve.files import stack_secret
from serve.protocol.schema import GenerationRequest
from serve.results import MEDIA_TYPES, ImageQuota, ImageStore, StoredImage, open_image_store
from serve.results.record import with_record
from serve.results.rerun import RerunRequest
from serve.results.settings import ResultSettings
from serve.results.tokens import UrlSigner
from serve.stores import quota

logger = logging.getLogger(__name__)

MAX_HISTORY_PAGE = 100
INPUT_IMAGES = ("image", "mask", "ip_adapter_image", "controlnets")
"""A stored request's fields that bring images (kept as hashes only)."""
ANSWER_FIELDS = ("response_format", "background", "priority", "quality", "style", "user", "webhook")
"""Request fields that shape how it is answered, not the image (the result cache's key, a generation's drawing, has
none of them): not in its record, so an image's base64, its URL and its job's answer are one PNG, and a rerun from
the record answers at once."""


def easel_version() -> str:
    """The installed Easel's version (``easel-serve``'s)."""
    try:
        return version("easel-serve")
    except PackageNotFoundError:
        return "unknown"


def generation_record(
    request: GenerationRequest, model, seed: int, index: int, size: tuple[int, int], owner: str | None = None
) -> dict:
    """What made image ``index`` of a generation of ``request`` on ``model`` (a served model) with ``seed``.

    ``owner``: the key that asked, whose own LoRAs its ``loras`` name (None: an open API's, the shared set).

    Its sampling, the model (name, version, the engine folder's content hash), adapters with their scales and
    content hashes, ControlNets, input images (SHA-256 of their base64 as sent), finishing, and the request itself
    (images as their hashes, :data:`ANSWER_FIELDS` left out), from which it can be made again.
    """
    hashed = request.images_hashed()
    loras = [
        {"name": choice.name, "scale": choice.scale, "hash": key}
        for choice, (key, _) in zip(request.loras, model.adapters.resolve(request, owner), strict=True)
    ]
    controls = [
        {k: c[k] for k in ("name", "scale", "start", "end", "preprocess", "image")} for c in hashed["controlnets"]
    ]
    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "model": model.name,
        "model_version": model.version,
        "model_hash": model.key,
        "sampler": request.scheduler,
        "steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "seed": seed,
        "size": f"{size[0]}x{size[1]}",
        "n": request.rows,
        "index": index,
        "strength": request.effective_strength if request.image else None,
        "loras": loras,
        "ip_adapters": hashed["ip_adapters"],  # each with its references' hashes, scale and masks' hashes
        "ip_adapter_image": hashed["ip_adapter_image"],
        "ip_adapter_reference": request.ip_adapter_reference,
        "controlnets": controls,
        "input_images": hashed["image"],
        "mask": hashed["mask"],
        "upscale": hashed["upscale"],
        "restore_faces": hashed["restore_faces"],
        "easel_version": easel_version(),
        "request": {k: v for k, v in hashed.items() if k not in ANSWER_FIELDS} | {"seed": seed},
    }


@dataclass(frozen=True)
class Delivered:
    """One image as answered: its bytes (a PNG carrying its record), and its URL where one was asked."""

    data: bytes
    url: str | None = None


QuotaOf = Callable[[str], ImageQuota | None]
"""The image quota of a key, by its id (None: no key, only the store's own bounds)."""


def key_quotas(store_url: str, defaults) -> QuotaOf:
    """Each key's image quota from the key store at ``store_url``: its own, else ``defaults`` (the stack's Quotas)."""
    keys = open_key_store(store_url)

    def quota_of(owner: str) -> ImageQuota | None:
        key = keys.get(owner) if owner else None
        own = key and key.limits
        return ImageQuota(quota(own, defaults, "images"), quota(own, defaults, "image_bytes")) if own else None

    return quota_of


REPORT_BYTES_S = 10.0
"""How often a replica sums the kept images' bytes for ``easel_image_store_bytes`` (the alert waits 30 minutes)."""


class Results:
    """Generated images kept (:class:`ImageStore`; None: the stack keeps none), their URLs signed by ``signer``.

    ``quota_of``: each key's image quota (none: only the store's own bounds hold).
    """

    def __init__(
        self,
        store: ImageStore | None = None,
        signer: UrlSigner | None = None,
        public_url: str | None = None,
        quota_of: QuotaOf | None = None,
    ) -> None:
        self.store, self.public_url = store, (public_url or "").rstrip("/")
        self.signer = signer or UrlSigner(secrets.token_bytes(32))  # none: this process's own
        self.quota_of = quota_of or (lambda owner: None)
        self._next_report = 0.0  # when the kept images' bytes are summed and published again (monotonic seconds)

    @classmethod
    def of(cls, settings: ResultSettings, store_url: str, secret_path: str | None, quotas=None) -> Results:
        """The stack's: its image store (none with ``image_store_bytes`` 0), its URL secret from ``secret_path``.

        ``quotas``: the stack's quotas per key (a :class:`serve.stores.Quotas`; None: their defaults).
        """
        store = None
        if settings.image_store_bytes > 0 and settings.image_store:
            limits = (settings.image_retention_s, settings.image_store_bytes)
            store = open_image_store(store_url, settings.image_store, *limits)
        secret = stack_secret(Path(secret_path)) if secret_path else secrets.token_bytes(32)  # none: this replica's
        signer = UrlSigner(secret, settings.image_url_ttl_s)
        return cls(store, signer, settings.public_url, key_quotas(store_url, quotas) if store else None)

    def check(self, request: GenerationRequest) -> None:
        """A request the stack cannot answer as asked: a URL from a stack that keeps no images (400)."""
        if request.response_format == "url" and self.store is None:
            raise InvalidInput(
                "response_format: url needs the image store; this stack keeps no images (--no-image-store)",
                "response_format",
            )

    async def delivered(
        self, request: GenerationRequest, model, seed: int, owner: str | None, images: dict[str, tuple[bytes, dict]]
    ) -> list[Delivered]:
        """``images`` (id -> its bytes and moderation mark, answer order) carrying their records, kept, URLs made.

        ``model``: the served model that made them; ``owner``: the key that asked (None: an open API).
        """
        return await asyncio.to_thread(self._delivered, request, model, seed, owner or "", images)

    def _delivered(
        self, request, model, seed: int, owner: str, images: dict[str, tuple[bytes, dict]]
    ) -> list[Delivered]:
        media_type, answered = MEDIA_TYPES[request.output_format], []
        owned = self.quota_of(owner) if self.store is not None else None  # its key's quota
        for index, (image_id, (data, mark)) in enumerate(images.items()):
            record = {}
            if request.metadata == "full":
                size = (0, 0) if request.output_format == "svg" else Image.open(io.BytesIO(data)).size
                made_by, place = request.origin(index, seed)  # many prompts: its prompt's own request
                record = generation_record(made_by, model, made_by.seed, place, size, owner or None) | {
                    "moderation": mark
                }
                data = with_record(data, record) if request.output_format == "png" else data
            if self.store is None:
                answered.append(Delivered(data))
                continue
            self.store.keep(StoredImage(image_id, owner, media_type, len(data), time.time(), record), data, owned)
            answered.append(Delivered(data, self.url(image_id) if request.response_format == "url" else None))
        if self.store is not None and answered and time.monotonic() >= self._next_report:
            self._next_report = time.monotonic() + REPORT_BYTES_S
            self._report_bytes()
        return answered

    def _report_bytes(self) -> None:
        """Publish the kept images' bytes and their bound (alerted on near it: deployments/prometheus/alerts.yml).

        The bytes are a sum over the whole store: at most once every :data:`REPORT_BYTES_S`, never on every answer.
        """
        metrics.set_gauge(metrics.IMAGE_STORE_BYTES, self.store.records.total(), part="kept")
        metrics.set_gauge(metrics.IMAGE_STORE_BYTES, self.store.max_bytes, part="bound")

    def url(self, image_id: str) -> str:
        """``image_id``'s signed URL, which needs no key until it expires."""
        return f"{self.public_url}/v1/images/{image_id}/content?{self.signer.query(image_id)}"

    async def answer_body(self, request: GenerationRequest, model, body: dict, owner: str | None) -> dict:
        """An answer's ``data`` (each item with its ``id`` and ``b64_json``) delivered as ``request`` asks."""
        images = {item["id"]: (base64.b64decode(item["b64_json"]), item.get("moderation")) for item in body["data"]}
        delivered = await self.delivered(request, model, body["seed"], owner, images)
        for item, done in zip(body["data"], delivered, strict=True):
            if done.url is None:
                item["b64_json"] = base64.b64encode(done.data).decode()
            else:
                del item["b64_json"]
                item["url"] = done.url
        return body

    def _store(self) -> ImageStore:
        if self.store is None:
            raise InvalidInput("image_id: this stack keeps no images (--no-image-store)", "image_id")
        return self.store

    async def image(self, key: ApiKey | None, image_id: str) -> Response:
        """``GET /v1/images/{id}``: the image, if ``key`` may see it (another key's is as unknown as a missing one)."""
        store = self._store()
        image = await asyncio.to_thread(store.find, image_id, owner_filter(key))
        return Response(await asyncio.to_thread(store.read, image), media_type=image.media_type)

    async def signed(self, image_id: str, expires: int, signature: str) -> Response:
        """An image by its signed URL (no key): 403 when the signature is not its or it expired, 404 once dropped."""
        self.signer.check(image_id, expires, signature)
        store = self._store()
        image = await asyncio.to_thread(store.find, image_id, None)
        headers = {"Cache-Control": f"private, max-age={max(0, int(expires - time.time()))}"}
        return Response(await asyncio.to_thread(store.read, image), media_type=image.media_type, headers=headers)

    async def history(self, key: ApiKey | None, after: str | None, limit: int) -> dict:
        """``key``'s images (every image for an admin key), newest first, after ``after`` (the previous last id)."""
        page = await asyncio.to_thread(self._store().page, owner_filter(key), after, limit + 1)
        data = [image.to_api() | {"url": self.url(image.id)} for image in page[:limit]]
        return {"object": "list", "data": data, "has_more": len(page) > limit}

    async def rerun_request(self, rerun: RerunRequest, key: ApiKey | None) -> GenerationRequest:
        """The request that made ``rerun``'s image (one of ``key``'s), answered as ``rerun`` asks.

        404 naming ``image_id`` as :meth:`image`; 400 when it cannot be made again: kept without its record, or made
        from input images (kept as hashes only).
        """
        image = await asyncio.to_thread(self._store().find, rerun.image_id, owner_filter(key))
        stored = image.record.get("request")
        if stored is None:
            raise InvalidInput("image_id: kept without its record (metadata none): it cannot be made again", "image_id")
        inputs = [name for name in INPUT_IMAGES if stored.get(name)] + ["ip_adapters"] * any(
            choice["images"] for choice in stored.get("ip_adapters", [])
        )
        inputs += ["identity.aligned_face"] * bool((stored.get("identity") or {}).get("aligned_face"))
        if inputs:
            fields = ", ".join(sorted(set(inputs)))
            raise InvalidInput(f"image_id: made from input images ({fields}), which are not kept", "image_id")
        return GenerationRequest.model_validate(stored | {"response_format": rerun.response_format})

    async def rerun_answer(self, rerun: RerunRequest, key: ApiKey | None, model, body: dict) -> dict:
        """A rerun's answer: the image its record names (its place in the batch), and what changed since it was made.

        ``changed``: the record's facts about the engines that differ now (the model's content hash, a LoRA's, Easel's
        version); none: the image is the same, bit for bit.
        """
        image = await asyncio.to_thread(self._store().find, rerun.image_id, owner_filter(key))
        then = image.record
        loras = model.adapters.resolve(GenerationRequest.model_validate(then["request"]), key and key.id)
        facts = {  # each: (then, now)
            "model_hash": (then["model_hash"], model.key),
            "loras": ([lora["hash"] for lora in then["loras"]], [content for content, _ in loras]),
            "easel_version": (then["easel_version"], easel_version()),
        }
        changed = [name for name, (before, now) in facts.items() if before != now]
        return body | {"data": [body["data"][then["index"]]], "rerun_of": image.id, "changed": changed}

    async def delete(self, key: ApiKey | None, image_id: str) -> dict:
        """Drop one of ``key``'s images (404 as :meth:`image`)."""
        image = await asyncio.to_thread(self._store().delete, image_id, owner_filter(key))
        return {"id": image.id, "object": "image", "deleted": True}
