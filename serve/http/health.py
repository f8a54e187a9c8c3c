"""The HTTP API's health routes, open to every caller: ``/healthz`` (alive) and ``/readyz`` (ready)."""

from collections.abc import Callable

from fastapi import Request

from serve.http.admission import serving


async def healthz(http: Request) -> dict:
    """Alive: the HTTP path through Ray Serve works."""
    return serving(http).health.alive()


async def readyz(http: Request) -> dict:
    """Ready: the loaded models', moderation checks' and Vectorizer's Triton models (503 with Retry-After if not)."""
    return await serving(http).health.ready()


ROUTES: tuple[tuple[str, str, Callable], ...] = (("GET", "/healthz", healthz), ("GET", "/readyz", readyz))
"""Method, path and handler of each route, in the OpenAPI document's order."""
