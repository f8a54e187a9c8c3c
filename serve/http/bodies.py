"""The bodies admission reads, once (:func:`read_body`): JSON, or a form, or an upload in one of its encodings.

JSON is read by the one strict reader (:func:`serve.wire.read_json`: UTF-8, its media type checked); the edits route's
form by :func:`serve.http.forms.read_edit_form` (its text UTF-8 too), a video's form as the openai client
sends it, the upscale route's JSON (``image`` base64) or form (``image`` a file part), the vectorize routes' form
(``file``), JSON (``image`` base64) or raw ``image/*`` body (:func:`read_vectorize_request`). Admission prices what was
read (:mod:`serve.http.admission`); the handler runs it.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from serve.errors import InvalidInput, invalid_input
from serve.finishing.schema import UpscaleJson, UpscaleOptions
from serve.http.forms import read_edit_form, read_video_form
from serve.images import base64_bytes
from serve.protocol.character_requests import CharacterReplacement
from serve.protocol.schema import GenerationRequest
from serve.protocol.video import InterpolateBody
from serve.routes import Route
from serve.serving.upscale import UpscaleBody
from serve.serving.vectorize import VectorizeBody
from serve.vectorize.schema import VectorizeJson, VectorizeOptions
from serve.wire import UTF8_NAMES, media_and_charset, read_json


async def read_body(found: Route, request: Request) -> BaseModel | tuple:
    """The request's body read as ``found.body`` (its size bounded by :class:`serve.wire.BodyLimits`), or a 400.

    JSON in UTF-8 (:func:`serve.wire.read_json`), or the edits form (:func:`read_edit_form`, its charset UTF-8), or
    the upscale route's JSON or form (:func:`read_upscale_request`), or a vectorize upload
    (:func:`read_vectorize_request`; ``analysis``: the analysis route's).
    """
    try:
        if found.form == "edits":
            return await _read_form(request)
        if found.form == "upscale":
            return await read_upscale_request(request)
        if found.form in ("vectorize", "analysis"):
            return VectorizeBody(*await read_vectorize_request(request), analysis=found.form == "analysis")
        content_type = request.headers.get("content-type")
        if found.form == "video" and (content_type or "").lower().startswith("multipart/form-data"):
            return await read_video_form(request)  # as the openai client sends it
        if found.form == "interpolate":  # the finished video the path names, and how to interpolate it
            options = read_json(found.body, await request.body(), content_type)
            return InterpolateBody(request.path_params["video_id"], options)
        if found.form == "character":  # the character the path names, made again
            character = read_json(found.body, await request.body(), content_type)
            return CharacterReplacement(request.path_params["name"], character)
        return read_json(found.body, await request.body(), content_type)
    except (StarletteHTTPException, MultiPartException) as error:  # the multipart parser's refusal (too many parts)
        detail = str(getattr(error, "detail", error))
        field = "image" if "files" in detail else "body"
        message = f"{field}: {detail} (the edits form: image, mask and the generation's fields)"
        raise InvalidInput(message, field) from None
    except ClientDisconnect:  # gone, or cut off by the wire's limits, whose answer replaces this one
        raise InvalidInput("body: the request ended before its body did", "body") from None
    finally:
        await request.close()  # a form's files


async def _read_form(request: Request) -> GenerationRequest:
    """The edits form's request; its text is UTF-8, as a JSON body's is (a ``charset`` other than that: 400)."""
    charset = media_and_charset(request.headers.get("content-type", ""))[1]
    if charset not in UTF8_NAMES:
        raise InvalidInput(f"body: a form's text must be UTF-8; Content-Type says charset={charset}", "body")
    return await read_edit_form(request)


async def read_upscale_request(request: Request) -> UpscaleBody:
    """The image bytes and options of an upscale request (multipart: an ``image`` file part; else JSON)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=len(UpscaleOptions.model_fields))
        except StarletteHTTPException as error:  # the multipart parser's refusal (too many parts, malformed)
            raise InvalidInput(f"body: {error.detail} (one file part, 'image', and the options)", "body") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("image: a multipart request needs a file part named 'image'", "image")
        fields = {key: value for key, value in form.items() if key != "image"}
        try:
            return UpscaleBody(await upload.read(), UpscaleOptions.model_validate(fields))
        except ValidationError as error:
            raise invalid_input(error) from None
    body = read_json(UpscaleJson, await request.body(), content_type or None)
    try:
        return UpscaleBody(base64_bytes(body.image), body)
    except ValueError as error:  # binascii.Error, or characters outside ASCII
        raise InvalidInput(f"image: not valid base64 ({error})", "image") from error


async def read_vectorize_request(request: Request) -> tuple[bytes, VectorizeOptions]:
    """The upload and options of a vectorize request: multipart (a ``file`` part), JSON (base64 ``image``) or raw."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=len(VectorizeOptions.model_fields))
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
