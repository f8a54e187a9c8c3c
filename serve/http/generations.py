"""The HTTP API's generation routes: OpenAI's images API, ``/v1/images/generations`` and ``/v1/images/edits``.

Each names its admission (:data:`serve.http.admission.Admit`): the body read once (JSON, or the edits form), the
generation admitted on its model and its cost charged, before the handler runs it, at once or as a background job.
"""

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from serve.access import caller
from serve.http.admission import Admit, serving
from serve.http.operations import answers
from serve.jobs.model import check_idempotency_key
from serve.serving.admitted import Admitted
from serve.serving.jobs import job_owner


class GenerationHeaders:
    """The headers both generation routes read (a dependency): ``Idempotency-Key`` (checked), ``Cache-Control``."""

    def __init__(
        self,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        cache_control: Annotated[str | None, Header(alias="Cache-Control")] = None,
    ) -> None:
        self.idempotency_key = check_idempotency_key(idempotency_key)
        self.fresh = "no-cache" in (cache_control or "").lower()  # generate afresh, whatever the result cache holds


@answers("POST", "/v1/images/generations")
async def generate(http: Request, headers: Annotated[GenerationHeaders, Depends()], admitted: Admit) -> JSONResponse:
    """OpenAI Images API: generate ``n`` images for a prompt, returned as base64 (svg: text -> image -> SVG).

    With ``background``: 202 and the job at once (an ``Idempotency-Key`` returns the same job for the same body).
    ``Cache-Control: no-cache`` generates afresh even when the result cache holds the answer. Input images
    (``image``, ``mask``: img2img, inpainting) and ``controlnets`` travel base64 in the JSON. The body (a
    :class:`GenerationRequest`) is the one admission read and priced.
    """
    return await _generation(http, headers, admitted)


@answers("POST", "/v1/images/edits")
async def edit(http: Request, headers: Annotated[GenerationHeaders, Depends()], admitted: Admit) -> JSONResponse:
    """OpenAI Images API's edits: multipart ``image`` (one or several) and ``mask`` files, the generation's fields.

    The mask's transparent pixels are redrawn; no mask: img2img. The answer is the generation's. The form is read,
    and priced, by admission, as a JSON body is.
    """
    return await _generation(http, headers, admitted)


async def _generation(http: Request, headers: GenerationHeaders, admitted: Admitted) -> JSONResponse:
    """A generation, whichever route it came by: a job (background) or the answer."""
    gateway, owner = serving(http), job_owner(caller(http))
    if admitted.request.background:
        return await gateway.jobs.submit(admitted, owner, headers.idempotency_key)
    return await gateway.generations.answer(admitted, owner and owner.key_id, headers.fresh)
