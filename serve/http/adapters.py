"""The HTTP API's adapter routes: LoRAs (``/v1/loras``) and stored IP-Adapter references (``/v1/references``).

Each handler names the operation it answers (:func:`serve.http.operations.answers`) and hands its call to the
Gateway's :class:`serve.serving.adapters.Adapters`; its docstring is its description in the OpenAPI document.
"""

from typing import Annotated

from fastapi import File, Form, Request
from fastapi import UploadFile as FormFile

from serve.access import caller
from serve.adapters.registry import NAME as LORA_NAME
from serve.adapters.registry import PRIVATE, SHARED
from serve.http.admission import AdmitBody
from serve.http.operations import answers
from serve.serving.adapters import Adapters

LORA_NAME_PATTERN = f"^{LORA_NAME.pattern}$"
VISIBILITY = f"^({PRIVATE}|{SHARED})$"
VISIBILITY_OR_KEPT = f"^({PRIVATE}|{SHARED})?$"
"""A replacement's visibility: empty keeps the LoRA's (a form field has no null)."""


def adapters(http: Request) -> Adapters:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.adapters


@answers("GET", "/v1/loras")
async def loras(http: Request) -> dict:
    """The LoRA adapters the caller may use (``--loras DIR``, the shared uploads, its own; an admin key: all).

    Each ready, or listed with why it cannot be.
    """
    return await adapters(http).loras_listed(caller(http))


@answers("POST", "/v1/loras")
async def lora_added(
    http: Request,
    file: Annotated[FormFile, File()],
    name: Annotated[str, Form(pattern=LORA_NAME_PATTERN)],
    model: Annotated[str, Form(max_length=64)] = "",
    visibility: Annotated[str, Form(pattern=VISIBILITY)] = PRIVATE,
) -> dict:
    """Add a LoRA adapter (scope ``adapters``), the caller's key's (``private``, the default) or every key's.

    ``shared`` is an admin key's to give (403 otherwise); an open API's uploads are shared. Served once diffusers
    has read it for ``model`` and its weights are within the stack's limits (400 naming ``file`` if not).
    """
    return await adapters(http).lora_added(name, model or None, file.file, caller(http), visibility)


@answers("PUT", "/v1/loras/{name}")
async def lora_replaced(
    http: Request,
    name: str,
    file: Annotated[FormFile | None, File()] = None,
    visibility: Annotated[str, Form(pattern=VISIBILITY_OR_KEPT)] = "",
    owner: Annotated[str | None, Form(max_length=64)] = None,
) -> dict:
    """Replace the caller's LoRA adapter's weights, or its visibility (``shared``: an admin key's to give).

    404 for a name the caller has not (another key's private LoRA too); requests in flight finish on the old
    weights. ``owner``: an admin key names another key's.
    """
    return await adapters(http).lora_replaced(name, file and file.file, caller(http), visibility or None, owner)


@answers("DELETE", "/v1/loras/{name}")
async def lora_removed(http: Request, name: str, owner: str | None = None) -> dict:
    """Remove the caller's uploaded LoRA adapter (404 if none, another key's too; 409 for a ``--loras`` folder's).

    ``owner`` (query): an admin key names another key's.
    """
    return await adapters(http).lora_removed(name, caller(http), owner)


@answers("POST", "/v1/references")
async def reference_added(http: Request, admitted: AdmitBody) -> dict:
    """Store an IP-Adapter reference: encoded once, its embeddings kept as the caller's key's.

    Priced by its image's decode and one image-encoder pass.
    """
    return await adapters(http).reference_added(admitted.body, caller(http))


@answers("GET", "/v1/references")
async def references_listed(http: Request) -> dict:
    """The caller's stored references (an admin key's, or an open API's: everyone's), newest first."""
    return await adapters(http).references_listed(caller(http))


@answers("GET", "/v1/references/{reference_id}")
async def reference(http: Request, reference_id: str) -> dict:
    """One stored reference; another key's is as unknown as a missing one (404)."""
    return await adapters(http).reference(caller(http), reference_id)


@answers("DELETE", "/v1/references/{reference_id}")
async def reference_removed(http: Request, reference_id: str) -> dict:
    """Forget a stored reference (404 for an unknown id or another key's)."""
    return await adapters(http).reference_removed(caller(http), reference_id)


"""(method, path, handler), in the document's order."""
