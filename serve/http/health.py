"""The HTTP API's health routes, open to every caller: ``/healthz`` (alive) and ``/readyz`` (ready)."""

from fastapi import Request

from serve.http.admission import serving
from serve.http.operations import answers


@answers("GET", "/healthz")
async def healthz(http: Request) -> dict:
    """Alive: the HTTP path through Ray Serve works."""
    return serving(http).health.alive()


@answers("GET", "/readyz")
async def readyz(http: Request) -> dict:
    """Ready: the loaded models', moderation checks' and Vectorizer's Triton models (503 with Retry-After if not)."""
    return await serving(http).health.ready()
