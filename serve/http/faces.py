"""The HTTP API's face route: ``POST /v1/faces/analyze``, the faces in an image by the stack's face models.

It names its admission (:data:`serve.http.admission.AdmitBody`: its body read once, the face models' presence
checked and its price taken, :func:`serve.serving.prices.face_analysis_cost`), then runs on the Gateway's
:class:`serve.serving.upscale.Upscaling`, which reaches the finishing engines and the face models.
"""

from fastapi import Request

from serve.http.admission import AdmitBody, serving
from serve.http.operations import answers


@answers("POST", "/v1/faces/analyze")
async def analyze_faces(http: Request, admitted: AdmitBody) -> dict:
    """The faces in an image (``easel up --faces DIR``): each one's box, score, 5 landmarks and 512-d embedding.

    Best-scored first, at most ``max_faces`` (the largest and most central past it); an image without a face gives an
    empty list. A 400 naming ``image`` when the stack serves no face models or the image does not decode, a 413 over
    4,194,304 pixels. Priced by its pixels, the detector's pass and a recognizer pass for each face it may report.
    """
    return await serving(http).upscaling.faces(admitted.body)
