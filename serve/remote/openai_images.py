"""OpenAI's images API as a remote model's protocol: what a request sends, and its answer read within bounds.

``POST {url}/v1/images/generations`` with OpenAI's fields (``prompt``, ``n``, ``size``, ``quality``, ``style``,
``user``, ``output_format``, ``output_compression``; ``response_format`` always ``b64_json``) and the extensions the
backend takes (:data:`serve.remote.settings.EXTENSIONS`). Whatever else a request asks is :func:`unsupported`.
The answer is read within the backend's timeout (a 504) and byte limit (a 502); a 429 or a 5xx of the service is
a 503 (its model cannot serve now: a fallback may), any other error of it a 502. An error's message quoted from the
service never carries the key it was sent (a service that echoes its request's headers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import ssl

import httpx

from serve.errors import BadGateway, GatewayTimeout, NotReady
from serve.remote.settings import RemoteBackend
from serve.text_to_image.generation import PROMPT_TRUNCATED, EncodedImages

logger = logging.getLogger(__name__)

PATH = "/v1/images/generations"
OPENAI_FIELDS = ("prompt", "n", "size", "quality", "style", "user", "output_format", "output_compression")
"""The request's fields OpenAI's images API names: sent as they are (an SVG is asked as a PNG and traced here)."""
ANSWERED_HERE = ("response_format", "background", "priority", "webhook", "fallback", "model", "metadata")
ANSWERED_HERE += ("vectorize_tier",)
"""Fields Easel honours itself, whoever draws: how the answer is shaped, queued and traced."""
NEVER_DROPPED = ("prompts", "image", "mask")
"""What a request is about: refused, never drawn without it, whatever the backend's ``unsupported``."""


def unsupported(request, backend: RemoteBackend) -> tuple[str, ...]:
    """The fields ``request`` sets that ``backend`` cannot honour (in the request's order)."""
    honoured = {*OPENAI_FIELDS, *ANSWERED_HERE, *backend.takes}
    return tuple(name for name in request.model_dump(exclude_defaults=True) if name not in honoured)


def request_body(request, backend: RemoteBackend, seed: int) -> dict:
    """The JSON ``request`` is sent as (``seed``: drawn at the door, sent where the backend takes seeds)."""
    fields = set(OPENAI_FIELDS) | set(backend.takes)
    body = {"prompt": request.prompt, "n": request.n} | request.model_dump(
        mode="json", exclude_defaults=True, include=fields - {"seed"}
    )
    if body.get("output_format") == "svg":
        del body["output_format"]  # drawn as a PNG and traced here
    body["response_format"] = "b64_json"
    if backend.model is not None:
        body["model"] = backend.model
    if "seed" in backend.takes:
        body["seed"] = seed
    return body


def read_answer(payload: bytes, backend: RemoteBackend, seed: int, name: str) -> EncodedImages:
    """The images of an answer, its seed (the service's, else the one sent, else None), what its prompt lost."""
    try:
        answer = json.loads(payload)
        images = [base64.b64decode(item["b64_json"], validate=True) for item in answer["data"]]
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise BadGateway(f"model: {name}'s service answered without images in b64_json ({error})", "model") from None
    if not images:
        raise BadGateway(f"model: {name}'s service answered with no image", "model")
    said = answer.get("seed")
    seed = said if isinstance(said, int) else seed if "seed" in backend.takes else None
    dropped = answer.get(PROMPT_TRUNCATED)
    return EncodedImages(images, seed, dropped if isinstance(dropped, int) else 0)


async def generate(
    request,
    backend: RemoteBackend,
    seed: int,
    name: str,
    key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> EncodedImages:
    """``request`` drawn by ``backend`` (the model ``name``), its answer read within the backend's bounds.

    ``key``: sent as a Bearer token (read by :meth:`RemoteBackend.api_key`); ``transport``: httpx's (a test's
    recorded answers); None: the network.
    """
    url = backend.url.rstrip("/") + PATH
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = request_body(request, backend, seed)
    try:
        async with (
            asyncio.timeout(backend.timeout_s),
            httpx.AsyncClient(timeout=backend.timeout_s, transport=transport, verify=_verify()) as client,
        ):
            async with client.stream("POST", url, json=body, headers=headers) as response:
                payload = await _read(response, backend, name)
    except (TimeoutError, httpx.TimeoutException):
        raise GatewayTimeout(
            f"model: {name}'s service did not answer within {backend.timeout_s:g} s", "model"
        ) from None
    except httpx.TransportError as error:
        logger.warning("model %s: its service at %s is unreachable: %s", name, backend.url, error)
        raise NotReady(f"model: {name}'s service is unreachable; retry shortly", "model", retry_after_s=2) from None
    if response.status_code == 429 or response.status_code >= 500:
        why = f"model: {name}'s service answered {response.status_code}: {_message(payload, key)}"
        raise NotReady(why, "model", retry_after_s=2)
    if not response.is_success:
        raise BadGateway(
            f"model: {name}'s service refused the request ({response.status_code}): {_message(payload, key)}", "model"
        )
    return read_answer(payload, backend, seed, name)


@functools.cache
def _verify() -> ssl.SSLContext:
    """The certificate check httpx makes (certifi's CAs), built once: a client building its own costs 26 ms of CPU."""
    return httpx.create_ssl_context()


async def _read(response: httpx.Response, backend: RemoteBackend, name: str) -> bytes:
    """The body, cut at the backend's byte limit (a 502 naming the model)."""
    limit = int(backend.max_mb * 1e6)
    too_large = BadGateway(f"model: {name}'s service answered with more than {backend.max_mb:g} MB", "model")
    if int(response.headers.get("content-length") or 0) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


MESSAGE_CHARS = 200
"""The most characters of a service's error message an error quotes."""
REDACTED = "[its key]"


def _message(payload: bytes, key: str | None = None) -> str:
    """An error answer's message (OpenAI's ``error.message``), else its body's start; 200 characters at most.

    ``key`` (what the service was sent) is cut out wherever it appears, before the message is shortened.
    """
    reach = MESSAGE_CHARS + len(key or "")
    try:
        message = str(json.loads(payload)["error"]["message"])[:reach]
    except (ValueError, KeyError, TypeError):
        message = payload[: 4 * reach].decode(errors="replace")[:reach]  # UTF-8: at most 4 bytes a character
    return (message.replace(key, REDACTED) if key else message)[:MESSAGE_CHARS]
