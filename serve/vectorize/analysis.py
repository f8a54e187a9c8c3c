"""What ``POST /v1/vectorize/analyze`` answers: an image's features, class, and each tier's predicted result.

Read from the same :class:`~serve.vectorize.tiers.Scores` and :func:`~serve.vectorize.tiers.choose` that
``/v1/vectorize`` answers with, so the class and tier it reports are those a conversion then takes (a quality check,
``check``, may still hand a conversion's answer to the defaults or tier 1).
"""

from __future__ import annotations

import math

from serve.vectorize.features import classify_with_confidence, feature_dict
from serve.vectorize.schema import Tier, VectorizeOptions
from serve.vectorize.tiers import DEFAULTS_ROW, MODEL_TIERS, Scores, choose, needs_check


def analysis(scores: Scores, side: int, options: VectorizeOptions) -> dict:
    """The analysis of one image whose longest side is ``side``, for a request with ``options`` (its tier included).

    ``predicted`` gives, per tier, the tier that would answer (tier 3 hands an untrusted pick to tier 1), its predicted
    SSIM and SVG bytes; ``default`` is vtracer's defaults.
    """
    image_class, confidence = classify_with_confidence(scores.features)
    asked = Tier(options.tier)
    choice = choose(asked, scores, side, options.time_budget_ms, options.target_quality)
    predicted = {
        "default": {
            "tier": Tier.DEFAULT.value,
            "ssim": float(scores.ssim[DEFAULTS_ROW]),
            "bytes": round(math.exp(float(scores.log_bytes[DEFAULTS_ROW]))),
        }
    }
    for tier in MODEL_TIERS:
        each = choose(tier, scores, side, options.time_budget_ms, options.target_quality)
        predicted[tier.value] = {
            "tier": each.used.value,
            "ssim": each.predicted_ssim,
            "bytes": round(each.predicted_bytes),
        }
    return {
        "features": feature_dict(scores.features),
        "image_class": image_class.value,
        "class_confidence": confidence,
        "familiar": scores.familiar,
        "requested_tier": asked.value,
        "tier": choice.used.value,
        "why": choice.why.value,
        "parameters": choice.params.kwargs(),
        "check": needs_check(choice, scores, options.prefer, options.target_quality),
        "predicted": predicted,
    }
