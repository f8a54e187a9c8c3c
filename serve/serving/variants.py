"""Experiment variants measured, whichever door a generation came by.

A generation is counted and timed, and its images' scores observed, by the model that served it and the experiment
that chose it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from serve import metrics
from serve.experiments.traffic import Assignment


@asynccontextmanager
async def variant_measured(assignment: Assignment) -> AsyncIterator[None]:
    """Count a generation by the model that serves it and the experiment that chose it, and time it."""
    labels = {"experiment": assignment.label, "variant": assignment.model}
    started = time.perf_counter()
    try:
        yield
    except Exception:
        metrics.count(metrics.VARIANT_REQUESTS, outcome="error", **labels)
        raise
    metrics.count(metrics.VARIANT_REQUESTS, outcome="ok", **labels)
    metrics.observe(metrics.VARIANT_LATENCY, time.perf_counter() - started, **labels)


def observe_scores(assignment: Assignment, scores: list[dict] | None) -> None:
    """Each image's scores in the metrics of the model that served it and the experiment that chose it.

    A negative score (a CLIP cosine below 0: prompt and image unrelated) counts as 0: a histogram takes no negative
    value (OpenTelemetry's rule; Ray's export of a replica's histograms stopped at one).
    """
    for image in scores or ():
        for name, value in image.items():
            if value is None:  # an identity where no face was found
                continue
            score = max(value, 0.0)
            metrics.observe(metrics.SCORE_METRICS[name], score, experiment=assignment.label, variant=assignment.model)
