"""The HTTP API's adapter routes: LoRAs (``/v1/loras``) and stored IP-Adapter references (``/v1/references``).

:data:`ROUTES`: the routes :mod:`serve.http.app` adds where they stand in the OpenAPI document (after the generations;
added one by one, not as an included router, whose lock Ray Serve could not pickle with the Gateway). Each hands its
call to the Gateway's :class:`serve.serving.adapters.Adapters`; a route's docstring is its description in the
document. Their scopes and body limits are :mod:`serve.routes`'.
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import File, Form, Request
from fastapi import UploadFile as FormFile

from serve.access import caller
from serve.adapters.registry import NAME as LORA_NAME
from serve.serving.adapters import Adapters
from serve.text_to_image.references import NewReference

LORA_NAME_PATTERN = f"^{LORA_NAME.pattern}$"


def adapters(http: Request) -> Adapters:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.adapters


async def loras(http: Request) -> dict:
    """The LoRA adapters (``--loras DIR``, then uploaded ones): each ready, or listed with why it cannot be."""
    return await adapters(http).loras_listed()


async def lora_added(
    http: Request,
    file: Annotated[FormFile, File()],
    name: Annotated[str, Form(pattern=LORA_NAME_PATTERN)],
    model: Annotated[str, Form(max_length=64)] = "",
) -> dict:
    """Add a LoRA adapter (scope ``adapters``): served once diffusers has read it for ``model`` (400 if not)."""
    return await adapters(http).lora_added(name, model or None, file.file)


async def lora_replaced(http: Request, name: str, file: Annotated[FormFile, File()]) -> dict:
    """Replace an uploaded LoRA adapter's weights (404 if none): requests in flight finish on the old ones."""
    return await adapters(http).lora_replaced(name, file.file)


async def lora_removed(http: Request, name: str) -> dict:
    """Remove an uploaded LoRA adapter (404 if none; 409 for one of the ``--loras`` folder)."""
    return await adapters(http).lora_removed(name)


async def reference_added(http: Request, body: NewReference) -> dict:
    """Store an IP-Adapter reference: encoded once, its embeddings kept as the caller's key's."""
    return await adapters(http).reference_added(body, caller(http))


async def references_listed(http: Request) -> dict:
    """The caller's stored references (an admin key's, or an open API's: everyone's), newest first."""
    return await adapters(http).references_listed(caller(http))


async def reference(http: Request, reference_id: str) -> dict:
    """One stored reference; another key's is as unknown as a missing one (404)."""
    return await adapters(http).reference(caller(http), reference_id)


async def reference_removed(http: Request, reference_id: str) -> dict:
    """Forget a stored reference (404 for an unknown id or another key's)."""
    return await adapters(http).reference_removed(caller(http), reference_id)


ROUTES: tuple[tuple[str, str, Callable], ...] = (
    ("GET", "/v1/loras", loras),
    ("POST", "/v1/loras", lora_added),
    ("PUT", "/v1/loras/{name}", lora_replaced),
    ("DELETE", "/v1/loras/{name}", lora_removed),
    ("POST", "/v1/references", reference_added),
    ("GET", "/v1/references", references_listed),
    ("GET", "/v1/references/{reference_id}", reference),
    ("DELETE", "/v1/references/{reference_id}", reference_removed),
)
"""(method, path, handler), in the document's order."""
