"""Liveness (the HTTP path through Ray Serve works) and readiness (every loaded engine, the Vectorizer, the checks)."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from serve.errors import NotReady
from serve.serving.models import ModelAdmin


class Health:
    """What ``/healthz`` and ``/readyz`` answer."""

    def __init__(
        self,
        text_to_image: DeploymentHandle,
        vectorizer: DeploymentHandle,
        models: ModelAdmin,
        checks: list[str] | None = None,
    ) -> None:
        self.text_to_image = text_to_image
        self.vectorizer = vectorizer
        self.models = models
        self.checks = checks or []  # the moderation checks' Triton models (the safety checker, the text moderator)

    @staticmethod
    def alive() -> dict:
        """Alive: this answer came through Ray Serve."""
        return {"status": "ok"}

    async def ready(self) -> dict:
        """Ready: every Triton model of the loaded models, the moderation checks and the Vectorizer is ready.

        ``circuits``: each called model's circuit breaker (an open one is said, not made a 503: others serve).

        A 503 with Retry-After if one is not.
        """
        states = await self.text_to_image.ready.remote(await self.models.loaded_triton_models() + self.checks)
        require_ready(states)
        vectorize = await self.vectorizer.ready.remote()
        return {"status": "ready", "models": {**states, **vectorize}, "circuits": self.models.circuits.states()}


def require_ready(states: dict[str, bool]) -> None:
    """Raise :class:`NotReady` naming the models that are not ready."""
    missing = sorted(name for name, ready in states.items() if not ready)
    if missing:
        raise NotReady(f"Triton models not ready: {', '.join(missing)}", retry_after_s=5)
