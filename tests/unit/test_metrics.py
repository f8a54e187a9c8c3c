import pytest

from serve import metrics
from serve.observability.dashboards import DATASOURCE_UID, PanelQuery, load_dashboards, panel_queries, panels


def test_metric_names_are_unique_and_series_follow_ray_naming():
    assert len({spec.name for spec in metrics.ALL}) == len(metrics.ALL)
    assert metrics.HTTP_REQUESTS.series == ("ray_easel_http_requests_total",)
    assert metrics.ADAPTER_LOADS.series == ("easel_adapter_loads_total",)  # a Triton model's: no ray_ prefix
    assert metrics.PIPELINE_LATENCY.series == tuple(
        f"ray_easel_pipeline_latency_seconds_{s}" for s in ("bucket", "sum", "count")
    )
    for spec in metrics.ALL:
        assert spec.name.startswith("easel_") and spec.description
        assert (spec.kind == "histogram") == bool(spec.boundaries)
        assert list(spec.boundaries) == sorted(spec.boundaries)
        assert all(bound > 0 for bound in spec.boundaries), spec.name  # Ray's histograms refuse any other


def test_every_ray_histogram_is_made_as_ray_makes_it():
    """Each histogram and its bounds as Ray Serve's metrics take them (its checks run as the metric is made)."""
    from ray.util.metrics import Histogram

    for spec in metrics.ALL:
        if spec.kind == "histogram" and spec.exporter == "ray":
            Histogram(spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tag_keys)


def test_recording_checks_tag_keys():
    metrics.count(metrics.DENOISING_STEPS, 3, scheduler="ddim")
    metrics.observe(metrics.QUEUE_TIME, 0.01, pipeline=metrics.VECTORIZE)
    with pytest.raises(ValueError, match="takes tags"):
        metrics.count(metrics.DENOISING_STEPS, 1, sampler="ddim")


def test_a_gauge_set_once_is_set_again_until_another_value_replaces_it(monkeypatch):
    """Ray drops a gauge not set for 20 s: a circuit that opened once must still read open minutes later."""
    import time

    from serve import gauge_refresh

    class Recorded:
        def __init__(self):
            self.sets = []

        def set(self, value, tags):
            self.sets.append((value, tags["model"]))

    gauge = Recorded()
    monkeypatch.setattr(metrics, "_metric", lambda spec: gauge)
    monkeypatch.setattr(gauge_refresh, "_latest", {})  # this test's gauges only
    monkeypatch.setattr(gauge_refresh, "REFRESH_S", 0.02)
    metrics.set_gauge(metrics.MODEL_CIRCUIT_STATE, 2, model="a")
    metrics.set_gauge(metrics.MODEL_CIRCUIT_STATE, 0, model="b")
    metrics.set_gauge(metrics.MODEL_CIRCUIT_STATE, 1, model="a")  # replaces a's 2
    set_by_hand = len(gauge.sets)
    deadline = time.monotonic() + 30  # the refresher may be asleep for its last (default) interval first
    while gauge.sets[set_by_hand:].count((1, "a")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    again = gauge.sets[set_by_hand:]
    assert again.count((1, "a")) >= 2 and (0, "b") in again and (2, "a") not in again


def test_timed_marks_errors(monkeypatch):
    seen = []
    monkeypatch.setattr(metrics, "observe", lambda spec, value, **tags: seen.append((spec, value, tags)))
    with metrics.timed(metrics.PIPELINE_LATENCY, pipeline="vectorize", outcome="ok"):
        pass
    with pytest.raises(RuntimeError), metrics.timed(metrics.PIPELINE_LATENCY, pipeline="vectorize", outcome="ok"):
        raise RuntimeError("boom")
    assert [tags["outcome"] for _, _, tags in seen] == ["ok", "error"]
    assert all(value >= 0 for _, value, _ in seen)


def test_queue_time_needs_a_send_time(monkeypatch):
    seen = []
    monkeypatch.setattr(metrics, "observe", lambda spec, value, **tags: seen.append(value))
    metrics.observe_queue_time(metrics.TEXT_TO_IMAGE, None)
    assert seen == []


def test_vectorize_reasons_are_bounded_labels():
    from serve.vectorize.tiers import FALLBACKS, Why

    assert all(why.value.isidentifier() for why in Why)
    assert set(FALLBACKS) < set(Why)
    assert "why" in metrics.VECTORIZE_TIERS.tag_keys


DASHBOARDS = load_dashboards()


def test_the_dashboards_are_importable_json():
    uids = {d["uid"] for d in DASHBOARDS}
    assert uids == {
        "easel-overview",
        "easel-text-to-image",
        "easel-vectorize",
        "easel-triton",
        "easel-jobs",
        "easel-experiments",
    }
    for dashboard in DASHBOARDS:
        assert dashboard["title"].startswith("Easel / ") and "id" not in dashboard
        variable = dashboard["templating"]["list"][0]
        assert variable["type"] == "datasource" and variable["query"] == "prometheus"
        assert variable["current"]["value"] == DATASOURCE_UID
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)) and ids
        for panel in panels(dashboard):
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["datasource"]["uid"] == "${datasource}" and t["expr"] for t in panel["targets"])


def test_dashboards_read_only_declared_easel_metrics_and_use_them_all():
    named = {name for d in DASHBOARDS for q in panel_queries(d) for name in q.metric_names()}
    declared = {name for spec in metrics.ALL for name in spec.series}
    easel = {name for name in named if name.startswith(("ray_easel_", "easel_"))}  # Ray's, and Triton models'
    assert easel <= declared, easel - declared
    assert [spec.name for spec in metrics.ALL if not set(spec.series) & easel] == []  # every one is on a panel
    assert all(name.startswith(("ray_easel_", "ray_serve_", "nv_", "easel_")) for name in named)


def test_grafana_interval_variables_become_plain_promql():
    panel_query = PanelQuery("d", "p", "A", "rate(x[$__rate_interval]) + rate(y[${__interval}])", "")
    assert panel_query.promql("30s") == "rate(x[30s]) + rate(y[30s])"
    assert "$" not in "".join(q.promql() for d in DASHBOARDS for q in panel_queries(d))


def test_rate_panels_show_zero_before_anything_happened():
    """A counter that has not moved yet has no series: its panel says 0, not "No data" (``or on() vector(0)``)."""
    import re

    rate_only = re.compile(r"^sum(?: by \([^)]*\))? ?\(rate\([^()]*\)\)(?: or on\(\) vector\(0\))?$")
    rates = [q for d in DASHBOARDS for q in panel_queries(d) if rate_only.match(q.expr)]
    assert len(rates) >= 10 and all(q.expr.endswith(" or on() vector(0)") for q in rates)
