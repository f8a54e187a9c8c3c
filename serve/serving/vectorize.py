"""Vectorize requests: a raster image, from its three HTTP encodings or gRPC's message, traced to SVG."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.errors import InvalidInput
from serve.images import base64_bytes
from serve.vectorize.deployment import VectorizeResult
from serve.vectorize.schema import VectorizeJson, VectorizeOptions
from serve.wire import read_json


async def read_vectorize_request(request: Request) -> tuple[bytes, VectorizeOptions]:
    """The upload and options of a vectorize request (the body's size is bounded by :class:`BodyLimits`)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except StarletteHTTPException as error:  # the multipart parser's refusal (too many parts, malformed)
            field = "file" if "files" in str(error.detail) else "body"
            raise InvalidInput(f"{field}: {error.detail} (one file part, 'file', and the options)", field) from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("file: a multipart request needs a file part named 'file'", field="file")
        fields = {key: value for key, value in form.items() if key != "file"}
        return await upload.read(), VectorizeOptions.model_validate(fields)
    if content_type.startswith("application/json"):
        body = read_json(VectorizeJson, await request.body(), content_type)
        try:
            return base64_bytes(body.image), body
        except ValueError as error:  # binascii.Error, or characters outside ASCII
            raise InvalidInput(f"image: not valid base64 ({error})", field="image") from error
    if content_type.startswith("image/"):
        return await request.body(), VectorizeOptions.model_validate(dict(request.query_params))
    raise InvalidInput("Content-Type must be multipart/form-data, application/json or image/*", field="Content-Type")


class Vectorizing:
    """Vectorize requests answered by the ``Vectorizer`` deployment."""

    def __init__(self, vectorizer: DeploymentHandle) -> None:
        self.vectorizer = vectorizer

    async def vectorize(self, image: bytes, options: VectorizeOptions) -> VectorizeResult:
        """The image traced to SVG (gRPC's ``Vectorize`` answers this)."""
        return await self.vectorizer.vectorize.remote(image, options, sent_at=time.time())

    async def answer(self, request: Request) -> Response:
        """The HTTP answer: the SVG, or with ``Accept: application/json`` the SVG, its tier and timings."""
        upload, options = await read_vectorize_request(request)
        result = await self.vectorize(upload, options)
        headers = {"Easel-Tier": result.tier}
        if result.fallback:  # a short label: free text (error messages) never goes into a header
            headers["Easel-Fallback"] = result.why
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(result.to_json(), headers=headers)
        return Response(result.svg, media_type="image/svg+xml", headers=headers)
