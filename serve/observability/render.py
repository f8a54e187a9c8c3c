"""Draw a dashboard's panels as a PNG from a real Prometheus, with the panels' own PromQL (no Grafana needed).

matplotlib is imported only here, so the serving path never loads it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from serve.observability.dashboards import panel_queries, panels
from serve.observability.prometheus import query_range

logger = logging.getLogger(__name__)


def render_dashboard(
    dashboard: dict,
    prometheus_url: str,
    out: Path,
    minutes: float = 15.0,
    window: str = "1m",
    titles: tuple[str, ...] = (),
) -> Path:
    """Plot every panel of ``dashboard`` (or those titled ``titles``) over the last ``minutes`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [p for p in panels(dashboard) if not titles or p["title"] in titles]
    queries = panel_queries({**dashboard, "panels": chosen})
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)
    columns = 2 if len(chosen) > 1 else 1
    rows = math.ceil(len(chosen) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.2 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, chosen, strict=False):
        for target in (q for q in queries if q.panel == panel["title"]):
            for series in query_range(prometheus_url, target.promql(window), start, end, step):
                times = [float(t) - end for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                axis.plot([t / 60 for t in times], values, label=_legend(target.legend, series["metric"]))
        axis.set_title(panel["title"], fontsize=10)
        axis.set_xlabel("minutes ago", fontsize=8)
        axis.set_ylabel(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""), fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="upper left")
    for axis in list(axes.flat)[len(chosen) :]:
        axis.set_visible(False)
    figure.suptitle(f"{dashboard['title']} (Prometheus {prometheus_url})", fontsize=11)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    logger.info("rendered %d panels of %s to %s", len(chosen), dashboard["uid"], out)
    return out


def _legend(template: str, labels: dict) -> str:
    """Grafana's ``{{label}}`` legend format filled in from a series' labels."""
    text = template or "{{__name__}}"
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text
