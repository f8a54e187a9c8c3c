"""A real Prometheus scraping a real stack: every panel query of every dashboard returns data after a bounded load.

The module starts its own stack with the Ray dashboard on (Prometheus then reads Ray's own service-discovery file)
and Prometheus on a free loopback port scraping every second; both are stopped when the module ends.
"""

import base64
import math
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from build_engines.faces.random_pack import drawn_faces, random_face_pack
from build_engines.scoring import random_aesthetic, random_clip
from serve import metrics
from serve.access import ACTIVE_CHECK_S, open_key_store
from serve.access.keys import KeyLimits
from serve.observability.dashboards import GPU_METRIC_PREFIX, load_dashboards, panel_queries
from serve.observability.prometheus import ALERT_RULES, PROMETHEUS_BINARY, metric_names, query
from serve.paths import ICONS_DEV
from serve.routes import Scope
from serve.stack import Stack, StackOptions
from tests.adapters import make_adapters
from tests.images import dev_icon_png, encode
from tests.integration.conftest import triton_killed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not PROMETHEUS_BINARY.exists(), reason=f"{PROMETHEUS_BINARY} is not installed (apt-get install prometheus)"
    ),
]

WINDOW = "5m"  # Grafana's $__rate_interval when queries are evaluated: covers the whole load
DEADLINE_S = 120  # Ray reports custom metrics every few seconds; Prometheus scrapes every second
ROUNDS = 2
QUERIES = [q for d in load_dashboards() for q in panel_queries(d)]


@pytest.fixture(scope="module")
def stack(default_model, tmp_path_factory):
    """Stack + Ray dashboard + Prometheus (1 s scrapes, storage in a temp dir), all stopped after the module.

    With LoRA adapters, one held per engine instance, so the load's adapters are loaded and evicted every round;
    with a tiny random scorer and face models of random weights (a character's ``scores.identity``).
    """
    adapters = make_adapters(default_model, tmp_path_factory.mktemp("adapters"))
    scorer = tmp_path_factory.mktemp("scorer")
    stack = Stack(
        StackOptions(
            port=0,
            dashboard=True,
            dashboard_port=0,
            prometheus=True,
            prometheus_port=0,
            scrape_interval_s=1,
            run_dir=tmp_path_factory.mktemp("run"),
            loras_dir=adapters.loras,
            lora_resident=1,
            ip_adapters={"ip": adapters.ip_adapter},
            approximate_cache=0.5,
            vectorize_record_rate=1.0,  # every vectorize answer recorded: the predictor's error has data
            scorers={"clip": random_clip(scorer / "clip"), "aesthetic": random_aesthetic(scorer / "aesthetic.pth")},
            faces=random_face_pack(tmp_path_factory.mktemp("faces") / "buffalo_l"),  # a character's identity score
        )
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if stack.prometheus is not None and stack.prometheus.process.poll() is None:
            stack.prometheus.process.kill()
            pytest.fail("Prometheus outlived the stack")


@pytest.fixture(scope="module")
def api(stack):
    """A client of the API that sends an API key (limits far above the load), so the per-key metrics have data."""
    limits = KeyLimits(requests_per_minute=100_000, cost_per_minute=100_000.0)
    _, key = open_key_store(stack.options.store).create("observability load", {Scope.ADMIN}, limits)
    time.sleep(ACTIVE_CHECK_S + 0.5)  # each Gateway replica re-reads whether keys exist
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.info.api_url, timeout=300, headers=headers) as client:
        yield client


@pytest.fixture(scope="module")
def prometheus(stack):
    assert stack.info.prometheus_url, "the stack did not start Prometheus (see its log in the run dir)"
    return stack.info.prometheus_url


def _icon() -> bytes:
    return dev_icon_png(ICONS_DEV / "val")


VECTORIZE_EXPERIMENT = "vectorize-ab"  # over the stack's vectorize version: the dashboard's variant panels have data
CHARACTER = "observed"  # a character the load's scored generations name: their faces give scores.identity


def _vectorize(api, tier: str, **fields: str) -> httpx.Response:
    data = {"tier": tier, "validate": "true", **fields}
    return api.post("/v1/vectorize", files={"file": ("icon.png", _icon(), "image/png")}, data=data)


def _exported(prometheus: str, expr: str, at_least: float, timeout_s: float = 45) -> None:
    """Wait until Prometheus has scraped ``expr >= at_least`` (Ray reports metrics every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(float(s["value"][1]) >= at_least for s in query(prometheus, expr)):
            return
        time.sleep(1)
    pytest.fail(f"Prometheus never saw {expr} >= {at_least} within {timeout_s} s")


def _jobs(api, round_: int) -> list[int]:
    """A background job run to the end and one canceled."""
    body = {"prompt": "icon", "size": "64x64", "num_inference_steps": 4, "seed": 100 + round_, "background": True}
    done = api.post("/v1/images/generations", json=body).json()
    canceled = api.post("/v1/images/generations", json={**body, "num_inference_steps": 150}).json()
    statuses = [api.post(f"/v1/jobs/{canceled['id']}/cancel").status_code]
    _succeeds(api, done["id"])
    statuses.append(api.get(f"/v1/jobs/{done['id']}").status_code)
    return statuses


def _succeeds(api, job_id: str, timeout_s: float = 120) -> None:
    """Wait until the background job ``job_id`` has succeeded."""
    deadline = time.monotonic() + timeout_s
    while (status := api.get(f"/v1/jobs/{job_id}").json()["status"]) != "succeeded":
        assert time.monotonic() < deadline, f"job {job_id} is {status} after {timeout_s} s"
        time.sleep(0.2)


def _round(api, round_: int) -> list[int]:
    """One burst: 4 concurrent generations (two with LoRAs, one from the approximate cache), every vectorize tier and
    one through an experiment, a 400 and a 404, a cache hit and feedback on its image, two background jobs.

    Each round's generations have seeds of their own (a repeated seed would be answered from the result cache).
    """
    jobs = [
        {"prompt": f"icon {i}", "size": "64x64", "num_inference_steps": 6, "seed": 10 * round_ + i, "scheduler": s}
        for i, s in enumerate(["ddim", "euler", "dpmpp_2m", "ddim"])
    ]
    jobs[1]["loras"], jobs[2]["loras"] = [{"name": "style"}], [{"name": "line"}]  # loaded and evicted each round
    jobs[3]["approximate_cache"] = True  # a miss in the first round, then starts from its kept latents
    jobs[0] |= {"scores": True, "character": {"name": CHARACTER}, "size": "128x128", "n": 2}  # the score panels' data
    with ThreadPoolExecutor(4) as pool:
        statuses = [r.status_code for r in pool.map(lambda job: api.post("/v1/images/generations", json=job), jobs)]
        statuses += [r.status_code for r in pool.map(lambda tier: _vectorize(api, tier), ["1", "2", "3", "auto"])]
    statuses.append(_vectorize(api, "default").status_code)
    statuses.append(_vectorize(api, "1", experiment=VECTORIZE_EXPERIMENT, user=f"user-{round_}").status_code)
    statuses.append(api.post("/v1/images/generations", json={"prompt": ""}).status_code)
    statuses.append(api.get("/no-such-route").status_code)
    cached = api.post("/v1/images/generations", json=jobs[0])  # a cache hit
    statuses.append(cached.status_code)
    image_id = cached.json()["data"][0]["id"]  # each answer's images have ids of their own, a cache hit's too
    statuses.append(api.post("/v1/feedback", json={"image_id": image_id, "rating": 1 + round_ % 5}).status_code)
    return statuses + _jobs(api, round_)


@pytest.fixture(scope="module")
def load(stack, api, prometheus):
    """A short bounded load on loopback, in rounds that Prometheus sees apart, so rates and quantiles have data.

    Round 0 kills Triton (a 503, a vectorize fallback) and the supervisor restarts it; rounds 1 and 2 are normal.
    """
    variants = {"policy": "split", "variants": {"vectorize.v1": 1.0}}
    assert api.put(f"/v1/experiments/{VECTORIZE_EXPERIMENT}", json=variants).status_code == 200
    picture = base64.b64encode(encode(Image.fromarray(drawn_faces([(160, 120, 60)])))).decode()
    made = api.post("/v1/characters", json={"name": CHARACTER, "images": [picture], "face": "largest"})
    assert made.status_code == 200, made.text
    with triton_killed(stack):
        statuses = [api.post("/v1/images/generations", json={"prompt": "x", "num_inference_steps": 2}).status_code]
        statuses.append(_vectorize(api, "3").status_code)
    vectorized = 'sum(ray_easel_http_requests_total{endpoint="/v1/vectorize"})'
    _exported(prometheus, vectorized, 1)
    for round_ in range(1, ROUNDS + 1):
        statuses += _round(api, round_)
        _exported(prometheus, vectorized, 1 + 5 * round_)  # each round's observations reach Prometheus apart
        _exported(prometheus, "sum(ray_easel_job_queue_seconds_count)", round_)
        _exported(prometheus, 'sum(ray_easel_cache_requests_total{result="hit"})', round_)
        _exported(prometheus, "sum(ray_easel_job_cancels_total)", round_)
    _until_every_panel_has_data(api, prometheus)
    return statuses


def _until_every_panel_has_data(api, prometheus) -> None:
    """More rounds until every panel query this stack can answer is a number.

    A replica's counter or histogram series is born at its first observation and Ray exports custom metrics every few
    seconds: if a series was first scraped already holding all of its observations, its rate is zero (a quantile or a
    ratio of rates NaN) however long one waits. Another round raises every series while Prometheus watches. Before
    each, one report interval of Ray's (10 s) for what is only late.
    """
    vectorized = 'sum(ray_easel_http_requests_total{endpoint="/v1/vectorize"})'
    for extra in range(1, 7):
        reported = time.monotonic() + 12
        while not (answered := all(_finite(query(prometheus, q.promql(WINDOW))) for q in _served(prometheus))):
            if time.monotonic() > reported:
                break
            time.sleep(2)
        if answered:
            return
        before = sum(float(r["value"][1]) for r in query(prometheus, vectorized))
        _round(api, 100 + extra)
        _exported(prometheus, vectorized, before + 5)


def _finite(result: list[dict]) -> bool:
    """At least one series, and at least one of them a finite number."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def _poll(check, what: str):
    deadline = time.monotonic() + DEADLINE_S
    missing = check()
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        missing = check()
    assert not missing, f"{what} after {DEADLINE_S} s: {missing}"


def test_load_got_the_answers_it_was_built_for(load):
    assert load[:2] == [503, 200]
    assert load[2:] == ([200] * 10 + [400, 404, 200, 200] + [200, 200]) * ROUNDS


def test_prometheus_scrapes_triton_and_ray(prometheus, load):
    def down():
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        up = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        return {"triton", "ray"} - up

    _poll(down, "jobs with no target up")


def test_prometheus_evaluates_every_alert_rule_on_exported_metrics(prometheus, load):
    """The stack's Prometheus loaded deployments/prometheus/alerts.yml and evaluates each rule without error, and
    every metric a rule reads is exported (Triton's GPU ones only where it sees a GPU)."""
    rules = [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]

    def unhealthy():
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        health = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
        return sorted(rule["alert"] for rule in rules if health.get(rule["alert"]) != "ok")

    _poll(unhealthy, "alert rules not loaded, or failing to evaluate")
    read = {name for rule in rules for name in re.findall(r"\b(?:ray|nv)_[a-z0-9_]+", rule["expr"])}
    read = {name for name in read if not name.startswith(GPU_METRIC_PREFIX)}
    _poll(lambda: sorted(read - metric_names(prometheus)), "metrics alert rules read that nothing exports")


UNSTAGED = {
    metrics.JOB_RETRIES: "a job retried after a fault mid-run: tests/unit/test_job_runner.py counts it",
    metrics.MODERATION_FLAGS: "a flagged prompt (this stack has no blocklist): tests/unit/test_moderation.py counts it",
    metrics.IMAGE_EVICTIONS: "an image dropped by retention: tests/image_store_contract.py counts it",
}
"""Declared metrics that only a fault the load does not stage moves (their panels read 0 until then)."""


def test_every_metric_easel_declares_is_exported(prometheus, load):
    expected = {name for spec in metrics.ALL if spec not in UNSTAGED for name in spec.series}
    _poll(lambda: sorted(expected - metric_names(prometheus)), "declared metrics not in Prometheus")


def _served(prometheus: str) -> list:
    """The panel queries this stack can answer: GPU panels only where Triton exports GPU metrics."""
    gpu = any(name.startswith(GPU_METRIC_PREFIX) for name in metric_names(prometheus))
    return [q for q in QUERIES if gpu or not q.needs_gpu]


def test_every_metric_a_dashboard_names_is_exported(prometheus, load):
    unstaged = {name for spec in UNSTAGED for name in spec.series}
    named = {name for q in _served(prometheus) for name in q.metric_names()} - unstaged
    _poll(lambda: sorted(named - metric_names(prometheus)), "metrics named by dashboards that nothing exports")


@pytest.fixture(scope="module")
def answers(prometheus, load) -> dict[str, list[dict]]:
    """Every panel query's result, polled until each has finite data or the deadline passes."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        results = {q.expr: query(prometheus, q.promql(WINDOW)) for q in _served(prometheus)}
        empty = [expr for expr, result in results.items() if not _finite(result)]
        if not empty or time.monotonic() > deadline:
            return results
        time.sleep(2)


@pytest.mark.parametrize("panel_query", QUERIES, ids=[f"{q.dashboard}:{q.panel}:{q.ref_id}" for q in QUERIES])
def test_every_panel_query_returns_data(prometheus, answers, panel_query):
    if panel_query.expr not in answers:
        pytest.skip("a GPU panel: Triton exports nv_gpu_* metrics only where it sees a GPU, and this machine has none")
    result = answers[panel_query.expr]
    if not _finite(result):
        raw = {name: query(prometheus, name)[:3] for name in panel_query.metric_names()}
        pytest.fail(f"no finite data for {panel_query.promql(WINDOW)}: got {result[:3]}; raw series: {raw}")


def test_a_gauge_set_once_is_still_exported_after_ray_would_drop_it(api, prometheus, load):
    """Ray stops exporting a gauge not set for 20 s (two report intervals). The kept images' bytes are set as answers
    are kept, a circuit's state as it changes: both must still read half a minute after (their alerts wait 30 and 1
    minutes), so each process sets its gauges again (serve/gauge_refresh.py)."""
    body = {"prompt": "a held gauge", "size": "64x64", "num_inference_steps": 2, "seed": 77}
    assert api.post("/v1/images/generations", json=body).status_code == 200
    time.sleep(25)  # the last answer's gauge set at least this long ago: past Ray's 20 s, plus a scrape
    parts = {s["metric"]["part"] for s in query(prometheus, "ray_easel_image_store_bytes")}
    assert parts == {"kept", "bound"}


def test_fallbacks_and_errors_are_counted_by_reason_and_status(prometheus, load):

    def missing():
        reasons = {s["metric"]["reason"] for s in query(prometheus, "ray_easel_vectorize_fallbacks_total")}
        statuses = {s["metric"]["status"] for s in query(prometheus, "ray_easel_http_requests_total")}
        return sorted(({"models_unavailable"} - reasons) | ({"200", "400", "404", "503"} - statuses))

    _poll(missing, "labels missing")


def test_a_similar_prompt_starts_from_kept_latents_and_says_how_many_steps_it_skipped(api):
    """The stack keeps latents half the steps in: a rewording of a kept prompt skips them; a seed alone never does."""
    body = {"size": "64x64", "num_inference_steps": 4, "seed": 5, "negative_prompt": "only this test's"}
    opted = body | {"approximate_cache": True}
    first = api.post("/v1/images/generations", json=opted | {"prompt": "a red heart icon"})
    near = api.post("/v1/images/generations", json=opted | {"prompt": "an icon of a red heart"})
    seeded = api.post("/v1/images/generations", json=body | {"prompt": "a red heart"})
    assert [r.status_code for r in (first, near, seeded)] == [200, 200, 200]
    assert first.headers["Easel-Steps-Skipped"] == "0" and near.headers["Easel-Steps-Skipped"] == "2"
    assert "Easel-Steps-Skipped" not in seeded.headers


def test_another_key_gets_neither_a_key_s_cached_answer_nor_its_kept_latents(stack, api):
    """Caches are per key by default: B sending A's exact request is a miss with 0 steps skipped; A again, a hit."""
    _, other = open_key_store(stack.options.store).create("another tenant", {Scope.GENERATE}, KeyLimits())
    body = {"prompt": "a green star icon", "size": "64x64", "num_inference_steps": 4, "seed": 9}
    body |= {"approximate_cache": True, "negative_prompt": "only this test's"}
    mine = api.post("/v1/images/generations", json=body)
    theirs = api.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {other}"})
    again = api.post("/v1/images/generations", json=body)
    assert [r.status_code for r in (mine, theirs, again)] == [200, 200, 200]
    assert mine.headers["Easel-Cache"] == "miss" and mine.headers["Easel-Steps-Skipped"] == "0"
    assert theirs.headers["Easel-Cache"] == "miss" and theirs.headers["Easel-Steps-Skipped"] == "0"
    assert again.headers["Easel-Cache"] == "hit"  # the cache works: A's own answer, for A


def test_a_cached_answer_s_feedback_is_taken_but_is_no_new_evidence(api):
    """One key, the result cache on: rating a cached answer again and again used to steer an experiment."""
    assert api.put("/v1/experiments/cached-ab", json={"variants": {"easel-default": 1.0}}).status_code == 200
    body = {"prompt": "a blue circle icon", "size": "64x64", "num_inference_steps": 2, "seed": 21, "model": "cached-ab"}
    try:
        fresh, cached = api.post("/v1/images/generations", json=body), api.post("/v1/images/generations", json=body)
        assert (fresh.headers["Easel-Cache"], cached.headers["Easel-Cache"]) == ("miss", "hit")
        assert cached.json()["experiment"] == {"id": "cached-ab", "variant": "easel-default"}  # as it was served
        ids = [answer.json()["data"][0]["id"] for answer in (fresh, cached)]
        rated = [api.post("/v1/feedback", json={"image_id": image_id, "rating": 5}) for image_id in ids]
        assert [r.status_code for r in rated] == [200, 200]
        assert [r.json()["experiment"] for r in rated] == ["cached-ab", None]
        posterior = api.get("/v1/experiments/cached-ab").json()["posteriors"]["easel-default"]
        assert posterior["feedback"] == 1
    finally:
        api.delete("/v1/experiments/cached-ab")


def test_unet_batches_merge_requests(prometheus, load):
    unet = '{model="unet"}'
    expr = f"sum(increase(nv_inference_count{unet}[{WINDOW}])) / sum(increase(nv_inference_exec_count{unet}[{WINDOW}]))"
    _poll(lambda: [] if _finite(query(prometheus, expr)) else [expr], "no UNet batch size")
    mean_batch = float(query(prometheus, expr)[0]["value"][1])
    assert mean_batch >= 2.0  # classifier-free guidance alone sends 2 samples per request


def test_ray_dashboard_shows_the_serve_app_deployments_and_replicas(stack, load):
    token = subprocess.run(["ray", "get-auth-token"], capture_output=True, text=True, timeout=60).stdout.split()[-1]
    url = f"{stack.info.dashboard_url}/api/serve/applications/"
    assert httpx.get(url, timeout=30).status_code == 401
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    app = response.json()["applications"]["easel"]
    assert app["status"] == "RUNNING"
    deployments = app["deployments"]
    assert set(deployments) == {"Gateway", "TextToImage", "Vectorizer", "ModelResidency"}
    for deployment in deployments.values():
        assert deployment["status"] == "HEALTHY"
        assert deployment["replicas"] and all(r["state"] == "RUNNING" for r in deployment["replicas"])


def test_dashboards_render_to_png_from_real_data(prometheus, load, tmp_path):
    pytest.importorskip("matplotlib")
    from serve.observability.render import render_dashboard

    out_dir = Path(os.environ.get("EASEL_DASHBOARD_PNG_DIR") or tmp_path)
    for dashboard in load_dashboards():
        path = render_dashboard(dashboard, prometheus, out_dir / f"{dashboard['uid']}.png", minutes=4, window="30s")
        assert path.stat().st_size > 10_000


def test_a_ramp_records_replicas_requests_in_flight_and_latency_over_time(stack, prometheus, tmp_path, monkeypatch):
    from loadtests.benchmarks.ramp import plot, record_ramp
    from loadtests.scenario import Scenario

    limits = KeyLimits(requests_per_minute=100_000, cost_per_minute=100_000.0)
    _, key = open_key_store(stack.options.store).create("ramp", {Scope.ADMIN}, limits)
    monkeypatch.setenv("EASEL_API_KEY", key)  # locust's users send it
    time.sleep(ACTIVE_CHECK_S + 0.5)
    # 20 s of load: Ray reports its metrics every 10 s, so at least one report of the autoscaler's in-flight count
    # falls while requests are in flight (a 13 s load once had none).
    stages = [{"duration_s": 12, "users": 3}, {"duration_s": 8, "users": 0}]
    scenario = Scenario.model_validate({"user_classes": ["SmallImageUser"], "stages": stages})
    code, points = record_ramp(stack.info, scenario, ICONS_DEV / "val", tmp_path)
    assert code == 0
    assert points and all(p.replicas and p.replicas >= 1 for p in points)  # Serve's replica count throughout
    users = [p.users for p in points if p.users is not None]
    assert max(users) == 3 and users[-1] < 3  # the shape rose, then fell
    assert any(p.p50_ms for p in points) and any(p.requests_per_s for p in points)
    assert any(p.in_flight for p in points), "Prometheus had no ray_serve_autoscaling_total_requests during the run"
    assert plot(points, scenario, tmp_path / "ramp.png").stat().st_size > 10_000
