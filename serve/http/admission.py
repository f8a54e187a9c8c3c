"""The HTTP door's admission, named in every handler that runs work: ``admitted: Annotated[..., Depends(admit)]``.

:func:`admit` reads the route's body once (:func:`serve.http.bodies.read_body`), admits it and charges its cost to
the caller's key (:meth:`serve.serving.admission.Admission.admit`: every check that can refuse it first), and hands
the handler what was admitted: a generation's :class:`~serve.serving.admitted.Admitted` (a video's too), an upscale's
:class:`~serve.serving.admission.AdmittedUpscale`, a vectorize request's
:class:`~serve.serving.vectorize.AdmittedVectorize`, a moderation's, a stored reference's, a score's or a prompt
analysis's :class:`~serve.serving.admission.AdmittedBody`. The key check before it (:class:`serve.access.KeyCheck`)
took the limits that need no body; nothing else reads a body for admission.
"""

from typing import Annotated, Any

from fastapi import Depends, Request

from serve.access import request_caller
from serve.http.bodies import read_body
from serve.routes import route
from serve.serving.admission import AdmittedBody, AdmittedRerun, AdmittedUpscale, Priced
from serve.serving.admitted import Admitted
from serve.serving.vectorize import AdmittedVectorize


def serving(http: Request) -> Any:
    """The Gateway replica that answers ``http``: its plain serving classes (:mod:`serve.serving`, set as it starts)."""
    return http.app.state.gateway


async def admit(http: Request) -> Priced:
    """The route's body read, admitted and charged to the caller's key: what the handler runs (400, 429 if not)."""
    body = await read_body(route(http.method, http.scope["route"].path_format), http)
    return await serving(http).admission.admit(body, request_caller(http))


Admit = Annotated[Admitted, Depends(admit)]
"""A generation's (or a video's) admission, as a handler's parameter."""
AdmitUpscale = Annotated[AdmittedUpscale, Depends(admit)]
"""An upscale's admission, as a handler's parameter."""
AdmitRerun = Annotated[AdmittedRerun, Depends(admit)]
"""A rerun's admission (the generation its image's record holds), as a handler's parameter."""
AdmitBody = Annotated[AdmittedBody, Depends(admit)]
"""A moderation's, a stored reference's, a score's or a prompt analysis's admission (priced by its own work)."""
AdmitVectorize = Annotated[AdmittedVectorize, Depends(admit)]
"""A vectorize request's or its analysis's admission (priced by its image's pixels and its tier)."""
