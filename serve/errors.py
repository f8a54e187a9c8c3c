"""Easel's exception hierarchy, mapped to HTTP status codes and gRPC codes in this one place.

Each error class declares its HTTP status; :data:`WIRE` gives the status its gRPC code and OpenAI error ``type``.
"""

from __future__ import annotations

import re

import grpc

_CODE = grpc.StatusCode
WIRE: dict[int, tuple[grpc.StatusCode, str]] = {
    400: (_CODE.INVALID_ARGUMENT, "invalid_request_error"),
    401: (_CODE.UNAUTHENTICATED, "authentication_error"),
    403: (_CODE.PERMISSION_DENIED, "permission_error"),
    404: (_CODE.NOT_FOUND, "not_found_error"),
    408: (_CODE.DEADLINE_EXCEEDED, "invalid_request_error"),
    409: (_CODE.FAILED_PRECONDITION, "conflict_error"),
    413: (_CODE.INVALID_ARGUMENT, "invalid_request_error"),
    429: (_CODE.RESOURCE_EXHAUSTED, "rate_limit_exceeded"),
    500: (_CODE.INTERNAL, "server_error"),
    502: (_CODE.UNAVAILABLE, "bad_gateway"),
    503: (_CODE.UNAVAILABLE, "service_unavailable"),
    504: (_CODE.DEADLINE_EXCEEDED, "gateway_timeout"),
}
"""An HTTP status Easel answers with -> its gRPC status code and its OpenAI-style error ``type``."""


def wire(status: int) -> tuple[grpc.StatusCode, str]:
    """:data:`WIRE`'s gRPC code and error type of ``status``; another 4xx is an invalid request, another 5xx a 500."""
    if status in WIRE:
        return WIRE[status]
    return (_CODE.INVALID_ARGUMENT, "invalid_request_error") if status < 500 else WIRE[500]


_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")
"""A Python object's default repr (``<_io.BytesIO object at 0x7f...>``), as a library's message may carry one."""


class EaselError(Exception):
    """Base of every error Easel reports to a client (its message never carries a Python object's repr)."""

    status = 500
    code: str | None = None  # OpenAI's error ``code`` where it names one; None: the HTTP status
    grpc_code, kind = WIRE[status]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.grpc_code, cls.kind = wire(cls.status)

    def __init__(self, message: str, field: str | None = None, retry_after_s: int | None = None) -> None:
        message = _REPR.sub("", message)
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.field, self.retry_after_s))

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error."""
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}

    def body(self) -> dict:
        """OpenAI-style error body: message, type and the offending field."""
        code = self.code or self.status
        return {"error": {"message": self.message, "type": self.kind, "param": self.field, "code": code}}


class InvalidInput(EaselError):
    """The request is malformed or out of range; the message names the field and the limit."""

    status = 400


class PayloadTooLarge(InvalidInput):
    """The upload is over a size limit."""

    status = 413


class ContentPolicyViolation(InvalidInput):
    """A prompt the stack's moderation flags, refused under the ``block`` policy (OpenAI's code for it)."""

    code = "content_policy_violation"


class RequestTimeout(InvalidInput):
    """The client took too long to send its request."""

    status = 408


class Unauthorized(EaselError):
    """No API key, or one that is unknown or revoked."""

    status = 401

    def headers(self) -> dict[str, str]:
        """The scheme the client must use."""
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(EaselError):
    """A valid API key whose scopes do not include what the route needs."""

    status = 403


class QuotaExceeded(EaselError):
    """A key keeps as many stored things (or bytes) as its quota allows: one must go first.

    No ``Retry-After``: waiting does not help. Its code is OpenAI's for a quota.
    """

    status = 429
    code = "insufficient_quota"


class NotFound(EaselError):
    """The request names something that does not exist (an unknown job id)."""

    status = 404


class Conflict(EaselError):
    """What was asked conflicts with the state (cancel a finished job; an idempotency key reused for another body)."""

    status = 409


class RouteError(EaselError):
    """What the web framework refuses before a route runs (no such route, a method it lacks, an unreadable body)."""

    def __init__(self, message: str, status: int, field: str | None = None) -> None:
        super().__init__(message, field)
        self.status = status
        self.grpc_code, self.kind = wire(status)

    def __reduce__(self):
        return (type(self), (self.message, self.status, self.field))


class Diverged(EaselError):
    """A generation whose latents turned NaN or Inf: refused with what caused it (its adapters, or the model)."""

    status = 500

    @classmethod
    def at(cls, step: int, steps: int) -> Diverged:
        """The error of latents found NaN or Inf after ``step`` of ``steps`` (0: in the decoded image)."""
        where = f"at step {step} of {steps}" if step else "in the decoded image"
        return cls(f"the latents turned NaN or Inf {where}")

    def caused_by(self, loras: list[str], model: str) -> EaselError:
        """The client's error: a 400 naming ``loras`` (their weights overflow), else the model's fault (500)."""
        if loras:
            named = ", ".join(repr(name) for name in loras)
            return InvalidInput(f"loras: {self.message} with LoRA adapters {named} on model {model}", "loras")
        return Diverged(f"model {model}: {self.message}", "model")


class NotReady(EaselError):
    """A backend (Triton, a model) is not up; retry later."""

    status = 503

    def __init__(self, message: str, field: str | None = None, retry_after_s: int | None = 5) -> None:
        super().__init__(message, field, retry_after_s)


class BadGateway(EaselError):
    """A remote model's service answered with what is no answer (an error, too many bytes, no images)."""

    status = 502


class GatewayTimeout(EaselError):
    """A remote model's service did not answer within its timeout."""

    status = 504


class Overloaded(NotReady):
    """Too many requests in flight; retry later."""

    status = 429


class Saturated(Overloaded):
    """A model's replica had no slot for the request within the queue wait its fallback chain allows."""


class UnsupportedModel(InvalidInput):
    """A model folder that is not a pipeline Easel serves; the message names what is missing or unknown."""


def invalid_input(error) -> InvalidInput:
    """The 400 for a pydantic (or FastAPI request) validation error: its first problem, naming the field.

    A check across fields names its field in the error's context (``ctx["field"]``).
    """
    first = error.errors()[0]
    named = (first.get("ctx") or {}).get("field")
    field = ".".join(str(part) for part in (*first["loc"], *([named] if named else ())) if part != "body") or "body"
    if first["type"] == "json_invalid":
        return InvalidInput(f"request body is not valid JSON: {first['msg']}", field="body")
    return InvalidInput(f"{field}: {first['msg'].removeprefix('Value error, ')}", field=field)
