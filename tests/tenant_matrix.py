"""The hostile-tenant matrix: every door that names a stored thing, where another key must get the unknown-id answer.

Declared once, read by a unit test (every ``ROUTES`` path with a ``{param}``, every RPC whose message names an id and
every request field that names a stored thing has its row, or is one of the stack's shared catalogs in
:data:`SHARED`) and by the integration tests that make each thing as one key and ask for it as another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One door naming a stored thing of one key: another key asking it must get what an unknown id gets."""

    thing: str  # what key A makes: "job", "image", "reference", "lora", "character"
    method: str  # an HTTP method (lower case, as ROUTES writes it), or "rpc"
    path: str  # a ROUTES path, or the gRPC method's name
    field: str  # where the id goes: the path's {param}, a body field (dotted into lists), or the query's
    param: str  # the field the 404 (400 for a generation's body) names
    where: str = "path"  # "path", "body", "query" or "rpc" (a field of its message)
    status: int = 404
    stack: str = "keys"  # the stack that makes the thing: "keys" (test_keys.py asks every row), "adapters" (LoRA-ready,
    # IP-Adapter, motion adapter: test_adapters.py asks every row), "in-process" (the app without a server, its stores
    # on SQLite: tests/unit/test_experiments_personal.py asks them)


_LORA = "loras.0.name"  # a generation naming a LoRA it may not use: a 400 naming the list's item
_CHARACTER = "character.name"  # a generation naming a character: a 400 naming its name
_IDENTITY = "identity.character"  # a generation keeping a character's face: a 400 naming it
_VIDEO = "video_id"  # a video is a job: another key's (or a still's) job is as unknown to the video doors as none

ROWS = (
    Row("job", "get", "/v1/jobs/{job_id}", "job_id", "id"),
    Row("job", "post", "/v1/jobs/{job_id}/cancel", "job_id", "id"),
    Row("job", "get", "/v1/jobs/{job_id}/events", "job_id", "id"),
    Row("job", "get", "/v1/jobs", "after", "after", where="query"),
    Row("job", "post", "/v1/feedback", "job_id", "job_id", where="body"),
    Row("job", "rpc", "Feedback", "job_id", "job_id", where="rpc"),
    Row("job", "get", "/v1/videos/{video_id}", _VIDEO, _VIDEO),
    Row("job", "get", "/v1/videos/{video_id}/content", _VIDEO, _VIDEO),
    Row("job", "delete", "/v1/videos/{video_id}", _VIDEO, _VIDEO),
    Row("job", "post", "/v1/videos/{video_id}/interpolate", _VIDEO, _VIDEO),
    Row("job", "rpc", "GetVideo", _VIDEO, _VIDEO, where="rpc"),
    Row("job", "rpc", "GetVideoContent", _VIDEO, _VIDEO, where="rpc"),
    Row("job", "rpc", "CancelVideo", _VIDEO, _VIDEO, where="rpc"),
    Row("job", "rpc", "InterpolateVideo", _VIDEO, _VIDEO, where="rpc"),
    Row("image", "get", "/v1/images/{image_id}", "image_id", "image_id"),
    Row("image", "delete", "/v1/images/{image_id}", "image_id", "image_id"),
    Row("image", "post", "/v1/images/rerun", "image_id", "image_id", where="body"),
    Row("image", "post", "/v1/feedback", "image_id", "image_id", where="body"),
    Row("image", "rpc", "Feedback", "image_id", "image_id", where="rpc"),
    Row("reference", "get", "/v1/references/{reference_id}", "reference_id", "reference_id", stack="adapters"),
    Row("reference", "delete", "/v1/references/{reference_id}", "reference_id", "reference_id", stack="adapters"),
    Row(
        "reference",
        "post",
        "/v1/images/generations",
        "ip_adapter_reference",
        "ip_adapter_reference",
        where="body",
        status=400,
        stack="adapters",
    ),
    Row("lora", "put", "/v1/loras/{name}", "name", "name", stack="adapters"),
    Row("lora", "delete", "/v1/loras/{name}", "name", "name", stack="adapters"),
    Row("lora", "post", "/v1/images/generations", "loras.0.name", _LORA, where="body", status=400, stack="adapters"),
    Row("lora", "post", "/v1/videos", "loras.0.name", _LORA, where="body", status=400, stack="adapters"),
    Row("character", "get", "/v1/characters/{name}", "name", "name", stack="adapters"),
    Row("character", "put", "/v1/characters/{name}", "name", "name", stack="adapters"),
    Row("character", "delete", "/v1/characters/{name}", "name", "name", stack="adapters"),
    Row("character", "post", "/v1/images/generations", _CHARACTER, _CHARACTER, "body", 400, "adapters"),
    Row("character", "post", "/v1/videos", _CHARACTER, _CHARACTER, "body", 400, "adapters"),
    Row("character", "post", "/v1/images/generations", _IDENTITY, _IDENTITY, "body", 400, "adapters"),
    Row("character", "post", "/v1/videos", _IDENTITY, _IDENTITY, "body", 400, "adapters"),
    Row("user", "get", "/v1/users/{user}/preferences", "user", "user", stack="in-process"),
    Row("user", "delete", "/v1/users/{user}/preferences", "user", "user", stack="in-process"),
)
"""Every door that names a key's stored thing."""

SHARED = {
    ("get", "/v1/images/{image_id}/content"): "an image's signed URL: its signature is the key, whoever asks",
    ("get", "/v1/models/{model_id}"): "the stack's served models, one catalog for every key",
    ("put", "/v1/models/{model_id}"): "the stack's served models (admin)",
    ("put", "/v1/models/{model_id}/fallback"): "the stack's served models' fallback chains (admin)",
    ("delete", "/v1/models/{model_id}"): "the stack's served models (admin)",
    ("delete", "/v1/vectorize/models/{version}"): "the stack's vectorize models (admin)",
    ("get", "/v1/experiments/{name}"): "the stack's experiments (admin)",
    ("put", "/v1/experiments/{name}"): "the stack's experiments (admin)",
    ("delete", "/v1/experiments/{name}"): "the stack's experiments (admin)",
}
"""Path parameters that name no key's thing: the stack's own catalogs, and the signed URL (why, for each)."""

STORED_FIELDS = {"image_id": "image", "job_id": "job", "video_id": "job", "ip_adapter_reference": "reference"}
STORED_FIELDS |= {"loras": "lora", "character": "character", "identity": "character"}
"""Request fields (of a body model or a gRPC message) that name a stored thing: each has its row on its door."""

UNKNOWN = {
    "job": "job_" + "0" * 24,
    "image": "img_" + "0" * 24,
    "reference": "ref_" + "0" * 24,
    "lora": "never-uploaded",
    "character": "never-made",
    "user": "never-served",
}
"""An id of each thing's shape that names nothing."""


def rows(stack: str) -> list[Row]:
    """The rows whose thing ``stack`` makes."""
    return [row for row in ROWS if row.stack == stack]


def row_id(row: Row) -> str:
    """A row's test id: ``GET /v1/jobs/{job_id}``, ``POST /v1/feedback image_id``, ``rpc Feedback job_id``."""
    named = "" if row.where == "path" else f" {row.field}"
    return f"{row.method.upper()} {row.path}{named}"
