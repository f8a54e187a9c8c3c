"""Load shapes for locust: ``easel loadtest`` adds this file when a scenario has ``stages``."""

from __future__ import annotations

import json
import os

from locust import LoadTestShape

from loadtests.scenario import STAGES_ENV, users_at


class StagesShape(LoadTestShape):
    """Users follow the scenario's stages (``$EASEL_LOADTEST_STAGES``: ``[[duration_s, users], ...]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = json.loads(os.environ[STAGES_ENV])

    def tick(self) -> tuple[int, float] | None:
        """The users wanted now; None ends the run."""
        return users_at(self.stages, self.get_run_time())
