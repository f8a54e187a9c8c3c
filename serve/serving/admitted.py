"""What admission hands on: a generation admitted at the Gateway, typed, the replica's to run.

:meth:`serve.serving.generations.Generations.admitted` builds it; the admission step (:mod:`serve.serving.admission`)
hands it to the handler, which runs it as it is (answered, queued as a job, streamed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serve.experiments.traffic import Assignment
from serve.models.admission import Plan
from serve.models.served import ServedModel
from serve.moderation import Screening
from serve.protocol.schema import GenerationRequest
from serve.remote.models import RemoteModel
from serve.serving.current_models import ModelsNow
from serve.text_to_image.drawing import Drawing


@dataclass(frozen=True)
class Admitted:
    """A generation admitted at the Gateway (:meth:`Generations.admitted`), the replica's to run.

    The request as its model serves it (an experiment's alias replaced by its variant), what chose that model, the
    served model that resolved and checked it, what it costs there, and the request as it was sent; the generation
    typed for that model (:class:`~serve.text_to_image.drawing.Drawing`, its seed drawn), which its replica runs and
    the result cache is keyed by, and its replica's plan.
    """

    request: GenerationRequest
    assignment: Assignment
    model: ServedModel | RemoteModel
    cost: float
    asked: GenerationRequest
    plan: Plan  # how its replica runs it: the replica keeps only its slot
    drawing: Drawing  # what its replica runs: all but the pixels
    screening: Screening = dataclasses.field(default_factory=Screening)  # its moderation policy and inputs' verdict
    owner: str | None = None  # the key it came with (None: an open API): whose LoRAs its names are
    models: ModelsNow | None = None  # the model table it was resolved in: its fallback chain's, its links' too
