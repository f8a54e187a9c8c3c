"""The HTTP API's upscale routes: the stack's upscalers, and an image upscaled (``/v1/images/upscale``).

The upscale names its admission (:data:`serve.http.admission.AdmitUpscale`): its JSON or form read once and priced by
the work it runs, before the handler runs it on the Gateway's :class:`serve.serving.upscale.Upscaling`.
"""

from fastapi import Request

from serve.http.admission import AdmitUpscale, serving
from serve.http.operations import answers
from serve.moderation.policy import marked


@answers("GET", "/v1/upscalers")
async def upscalers_listed(http: Request) -> dict:
    """This stack's finishing engines (upscalers, face restorers, interpolators, face models): ready, or why not."""
    return serving(http).upscaling.listing()


@answers("POST", "/v1/images/upscale")
async def upscale(http: Request, admitted: AdmitUpscale) -> dict:
    """Upscale an image with a served upscaler: JSON (base64 ``image``) or multipart (an ``image`` file part).

    Under a moderation policy its image is checked by its admission (under block a flagged one is a 400 naming
    ``image``, before its cost is taken).
    """
    return marked(await serving(http).upscaling.upscale(*admitted.body), admitted.screening)
