"""Grafana push and Prometheus config without servers (no Grafana can run here; nothing is faked)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from serve.cli.main import main
from serve.observability.dashboards import DATASOURCE_UID, load_dashboards
from serve.observability.grafana import GrafanaPushError, dashboard_body, datasource_body, push
from serve.observability.prometheus import PROMETHEUS_CONFIG, render_config
from serve.processes import free_port


def test_dashboard_body_saves_by_uid_in_place():
    dashboard = {**load_dashboards()[0], "id": 12, "version": 3}
    body = dashboard_body(dashboard)
    assert body["overwrite"] is True and body["folderUid"] == "easel"
    assert "id" not in body["dashboard"] and "version" not in body["dashboard"]
    assert body["dashboard"]["uid"] == dashboard["uid"]
    json.dumps(body)


def test_datasource_body_has_the_uid_the_dashboards_use():
    body = datasource_body("http://127.0.0.1:9090")
    assert body["uid"] == DATASOURCE_UID and body["type"] == "prometheus" and body["url"] == "http://127.0.0.1:9090"


@pytest.mark.parametrize("url", ["not-a-url", "ftp://grafana", "http://"])
def test_push_refuses_urls_that_are_not_http(url):
    with pytest.raises(GrafanaPushError, match="http"):
        push(url, "token", "http://127.0.0.1:9090")


def test_push_to_an_unreachable_grafana_is_a_clear_error():
    with pytest.raises(GrafanaPushError, match="cannot talk to Grafana"):
        push(f"http://127.0.0.1:{free_port()}", "token", "http://127.0.0.1:9090", timeout_s=3)


def test_cli_push_error_exits_non_zero_without_traceback():
    result = CliRunner().invoke(
        main, ["dashboards", "push", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t"]
    )
    assert result.exit_code == 1
    assert "Error: cannot talk to Grafana" in result.output and "Traceback" not in result.output


def test_cli_render_unknown_dashboard_is_a_clear_error():
    result = CliRunner().invoke(main, ["dashboards", "render", "--dashboard", "nope"])
    assert result.exit_code == 1 and "easel-overview" in result.output


def test_prometheus_config_is_aimed_at_one_stack(tmp_path):
    config = render_config("127.0.0.1:4242", tmp_path / "ray.json", 1.0)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["triton"]["static_configs"] == [{"targets": ["127.0.0.1:4242"]}]
    assert jobs["ray"]["file_sd_configs"] == [{"files": [str(tmp_path / "ray.json")]}]
    assert config["global"]["scrape_interval"] == "1s"


def test_committed_prometheus_config_reads_rays_discovery_file():
    import yaml

    jobs = {job["job_name"]: job for job in yaml.safe_load(Path(PROMETHEUS_CONFIG).read_text())["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert jobs["triton"]["static_configs"][0]["targets"] == ["127.0.0.1:8002"]
