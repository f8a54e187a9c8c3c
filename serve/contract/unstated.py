"""A limit no schema states (:class:`UnstatedLimit`), and the paths of the routes whose limits say so.

The limits themselves are tables: a generation's and a video's fields (:mod:`serve.contract.generation_limits`),
every one of the API's (:data:`serve.contract.limits.UNSTATED_LIMITS`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class UnstatedLimit:
    """A limit no schema states: a schema-valid request over it is refused with ``status``, naming one of ``params``."""

    method: str
    path: str
    params: tuple[str, ...]  # the fields the refusal may name (``*`` stands for a list index)
    says: str  # what the refusal's message says
    limit: str  # the limit, as the document says it
    why: str  # why no schema states it
    status: int = 400

    def refuses(self, method: str, path: str, status: int, error: dict) -> bool:
        """Whether ``error`` (the error body's ``error``), answered with ``status`` to an operation, is this limit's."""
        if (method.lower(), path, status) != (self.method, self.path, self.status) or self.says not in error["message"]:
            return False
        return any(fnmatch.fnmatchcase(error["param"] or "", param) for param in self.params)


GENERATIONS, EDITS, VECTORIZE = "/v1/images/generations", "/v1/images/edits", "/v1/vectorize"
ANALYZE, UPSCALE, MODERATIONS = "/v1/vectorize/analyze", "/v1/images/upscale", "/v1/moderations"
"""The routes whose bodies are read by hand (the document states them: :func:`serve.contract.openapi`)."""
VIDEOS = "/v1/videos"
BY_DECODING = "whether bytes are an image is known by decoding them"
"""Why no schema states what an image holds."""
