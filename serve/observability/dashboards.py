"""The Grafana dashboards in ``deployments/grafana/``: loading them, and their panel queries as plain PromQL.

Each dashboard is importable JSON: a ``uid``, a ``title``, a ``datasource`` template variable (type prometheus,
default uid :data:`DATASOURCE_UID`) and panels whose targets name ``${datasource}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from serve.paths import PROJECT_ROOT

DASHBOARD_DIR = PROJECT_ROOT / "deployments" / "grafana"
DATASOURCE_UID = "easel-prometheus"
GPU_METRIC_PREFIX = "nv_gpu_"
_GRAFANA_VARIABLES = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval)\}")
_METRIC = re.compile(r"\b(?:ray|nv|easel)_[A-Za-z0-9_:]+")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str
    legend: str

    def promql(self, window: str = "1m") -> str:
        """The expression with Grafana's interval variables replaced by ``window``, for Prometheus' own API."""
        return _GRAFANA_VARIABLES.sub(window, self.expr)

    def metric_names(self) -> set[str]:
        """The Ray (``ray_*``), Triton (``nv_*``) and Triton-model (``easel_*``) metric names the expression reads."""
        return set(_METRIC.findall(self.expr))

    @property
    def needs_gpu(self) -> bool:
        """Whether it reads Triton's GPU metrics, which Triton exports only where it sees a GPU."""
        return any(name.startswith(GPU_METRIC_PREFIX) for name in self.metric_names())


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict]:
    """Every dashboard JSON in ``directory``, sorted by file name."""
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def panels(dashboard: dict) -> list[dict]:
    """The dashboard's panels, with those nested in collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel.get("type") != "row"]


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    """Every target of every panel of ``dashboard``."""
    return [
        PanelQuery(dashboard["uid"], panel["title"], target["refId"], target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
