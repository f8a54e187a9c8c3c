"""A Vectorizer replica's recording of its answers: which to keep (sampled), what of them, and the predictor's error.

See :mod:`serve.vectorize.records` for the store and the export.
"""

from __future__ import annotations

import io
import logging
import random
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from serve import metrics
from serve.vectorize.features import feature_dict
from serve.vectorize.records import DEFAULT_MAX_ROWS, Record, RecordStore, open_record_store

logger = logging.getLogger(__name__)


@dataclass
class Recording:
    """Record a ``rate`` share of answers in the store at ``store_url`` (images only when ``images``)."""

    rate: float = 0.0
    images: bool = False
    store_url: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    rng: random.Random = field(default_factory=random.Random)
    _store: RecordStore | None = None

    @classmethod
    def of(cls, settings) -> Recording:
        """What the stack's settings (``--vectorize-record-*``, its store) ask to record."""
        rows = settings.vectorize_record_rows
        return cls(settings.vectorize_record_rate, settings.vectorize_record_images, settings.store, rows)

    def sampled(self) -> bool:
        """Whether the next answer is recorded."""
        return self.rate > 0 and self.store_url is not None and self.rng.random() < self.rate

    def keep(self, result, pixels: np.ndarray, scores) -> None:
        """Record one answer (its SSIM measured) and the predictor's absolute error; a store failure is logged only."""
        record = Record(
            at=time.time(),
            model_version=result.model_version,
            tier=result.tier,
            image_class=result.image_class,
            features=feature_dict(scores.features) if scores is not None else {},
            parameters=result.parameters,
            predicted_ssim=result.predicted_quality,
            ssim=result.ssim,
            bytes=result.bytes,
            image_png=_png(pixels) if self.images else None,
        )
        if record.error is not None:
            labels = {"tier": record.tier, "model_version": record.model_version}
            metrics.observe(metrics.VECTORIZE_PREDICTOR_ERROR, abs(record.error), **labels)
        try:
            if self._store is None:
                self._store = open_record_store(self.store_url, self.max_rows)
            self._store.add(record)
        except Exception as error:  # noqa: BLE001 - recording never fails an answer
            logger.warning("vectorize answer not recorded: %s", error)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()
