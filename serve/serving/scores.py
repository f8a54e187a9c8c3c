"""``POST /v1/images/score``: images scored by the stack's scorer engines, with an optional prompt.

The images are decoded and scored in a ``TextToImage`` replica, where the scorer's engines are reached
(:class:`serve.scoring.Scorer`): ``clip_score`` (the prompt-image cosine, with a prompt) and
``aesthetic`` (with the head served), each image's in order. The request was admitted first
(:func:`serve.serving.prices.score_cost`: each image's size read from its header, the scorer's presence checked, its
cost taken): nothing here decodes before that.
"""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from serve.protocol.quality_requests import ScoreRequest


class ImageScores:
    """Scores images by the scorer the ``TextToImage`` replicas reach."""

    def __init__(self, text_to_image: DeploymentHandle) -> None:
        self.text_to_image = text_to_image

    async def scored(self, body: ScoreRequest) -> dict:
        """One entry per image, in order: its ``clip_score`` (with a prompt) and ``aesthetic`` (with a head)."""
        scores = await self.text_to_image.score.remote(body.images, body.prompt)
        return {"object": "list", "data": [{"index": i, **s} for i, s in enumerate(scores)]}
