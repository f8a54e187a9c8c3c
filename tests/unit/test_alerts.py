"""The alert rules as code (deployments/prometheus/alerts.yml): promtool's checks and unit tests, what they read."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from serve import metrics
from serve.observability.dashboards import load_dashboards, panel_queries
from serve.observability.prometheus import ALERT_RULES, ALERT_TESTS, PROMTOOL_BINARY, render_config
from serve.paths import PROJECT_ROOT

RULES = [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]
ALERTS = {rule["alert"]: rule for rule in RULES}
METRIC = re.compile(r"\b(?:ray|nv|easel)_[A-Za-z0-9_:]+\b")
needs_promtool = pytest.mark.skipif(
    not PROMTOOL_BINARY.exists(), reason=f"{PROMTOOL_BINARY} is not installed (apt-get install prometheus)"
)


def _promtool(*args: str, cwd: Path = ALERT_RULES.parent) -> None:
    """Run promtool in ``cwd`` on files named there (no path naming a server: tests/unit/conftest.py)."""
    done = subprocess.run([str(PROMTOOL_BINARY), *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    _promtool("check", "rules", ALERT_RULES.name)
    _promtool("test", "rules", ALERT_TESTS.name)


@needs_promtool
def test_the_config_a_stack_renders_loads_the_rules(tmp_path):
    config = render_config("127.0.0.1:8002", tmp_path / "ray.json", 5.0)
    assert config["rule_files"] == [str(ALERT_RULES.resolve())]
    (tmp_path / "ray.json").write_text("[]")
    (tmp_path / "rendered.yml").write_text(yaml.safe_dump(config))
    _promtool("check", "config", "rendered.yml", cwd=tmp_path)  # reads and checks the rule files it names


def test_every_alert_has_a_series_that_fires_it_and_one_that_does_not():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fired == set(ALERTS) and quiet == set(ALERTS)


def test_alerts_read_only_metrics_the_stack_exports():
    """Easel's from serve/metrics.py; Ray Serve's and Triton's ones a dashboard reads (the integration test sees each
    exported), and Prometheus' own ``up``."""
    declared = {name for spec in metrics.ALL for name in spec.series}
    on_dashboards = {name for d in load_dashboards() for q in panel_queries(d) for name in q.metric_names()}
    for name, rule in ALERTS.items():
        named = set(METRIC.findall(rule["expr"]))
        assert named or "up{" in rule["expr"], name
        easel = {n for n in named if n.startswith("ray_easel_")}
        assert easel <= declared, (name, easel - declared)
        assert named - easel <= on_dashboards, (name, named - easel - on_dashboards)


def test_every_alert_says_how_bad_and_is_documented():
    guide = (PROJECT_ROOT / "docs" / "guides" / "operations.md").read_text()
    for name, rule in ALERTS.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert f"`{name}`" in guide, f"{name} is not in docs/guides/operations.md"


def test_the_committed_config_loads_the_rules_beside_it():
    config = yaml.safe_load((Path(ALERT_RULES).parent / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERT_RULES.name]
