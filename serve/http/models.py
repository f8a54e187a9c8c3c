"""The HTTP API's model routes: the stack's ControlNets, and the models it serves (OpenAI's list; an admin changes it).

Each hands its call to the Gateway's :class:`serve.serving.models.ModelAdmin`.
"""

from fastapi import Request

from serve.http.admission import serving
from serve.http.operations import answers
from serve.models.table import ModelFolder
from serve.serving.models import FallbackChain, NewModel


@answers("GET", "/v1/controlnets")
async def controlnets_listed(http: Request) -> dict:
    """The ControlNets of this stack (``easel up --controlnet NAME=DIR``): each ready, or listed with why not."""
    return serving(http).models.controlnets()


@answers("GET", "/v1/models")
async def models_listed(http: Request) -> dict:
    """OpenAI's model list: every model this stack serves (the default first), with its family and what it takes."""
    return await serving(http).models.listing()


@answers("GET", "/v1/models/{model_id}")
async def model(http: Request, model_id: str) -> dict:
    """One served model, as the list gives it (404 if this stack serves none of that name)."""
    return await serving(http).models.describe(model_id)


@answers("POST", "/v1/models")
async def model_added(http: Request, body: NewModel) -> dict:
    """Serve a built engine folder as a new model (admin): installed in Triton and loaded if it fits the room.

    Or, with ``remote``, a model another service draws (family ``remote``): ``easel models add-remote``.
    A name served already or an experiment's is a 409; a folder Triton cannot load a 400 naming ``engine_dir``,
    and nothing changes. ``easel models add NAME=DIR`` builds the folder and calls this.
    """
    return await serving(http).models.add(body)


@answers("PUT", "/v1/models/{model_id}")
async def model_replaced(http: Request, model_id: str, body: ModelFolder) -> dict:
    """Serve a built engine folder as the model's next version (admin; 404 if none is served under that name).

    Requests from here on get the new version; those in flight finish on the old one, which is then unloaded.
    Its uploaded LoRAs (``loras_dir``: LoRA-ready engines) are prepared again for the new engines.
    """
    replaced = await serving(http).models.replace(model_id, body)
    await serving(http).adapters.loras_refreshed()
    return replaced


@answers("PUT", "/v1/models/{model_id}/fallback")
async def model_fallback(http: Request, model_id: str, body: FallbackChain) -> dict:
    """Set the model's fallback chain (admin): the models that answer, in turn, when it cannot serve; its entry.

    A link that is not a model of this stack (served or remote), the model itself or one named twice is a 400 naming
    ``chain``; an empty chain removes it. ``easel models fallback MODEL LINK,...`` calls this.
    """
    return await serving(http).models.chain(model_id, body)


@answers("DELETE", "/v1/models/{model_id}")
async def model_removed(http: Request, model_id: str) -> dict:
    """Stop serving a model (admin): its requests in flight finish; its jobs not started fail naming ``model``.

    404 if none is served under that name; 409 for the default model or one an experiment has as a variant.
    """
    return await serving(http).models.remove(model_id)
