"""The Grafana dashboard reads metrics a running app exports: every metric a panel queries is in
the Prometheus endpoints of the session's cluster after a request."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray")

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "glimp-ray.json"


def panel_metrics() -> dict[str, set[str]]:
    """Each panel's title -> the metric names its queries read."""
    dashboard = json.loads(DASHBOARD.read_text())
    metric = re.compile(r"\bray_[a-z0-9_]+")
    return {
        panel["title"]: {name for target in panel["targets"] for name in metric.findall(target["expr"])}
        for panel in dashboard["panels"]
    }


def exported() -> str:
    """What every node's metrics endpoint serves, concatenated."""
    pages = []
    for node in ray.nodes():
        if node["Alive"] and node.get("MetricsExportPort"):
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            try:
                pages.append(httpx.get(url, timeout=10).text)
            except httpx.HTTPError:
                continue
    return "\n".join(pages)


def test_the_dashboard_covers_routing_pools_replicas_and_shedding() -> None:
    wanted = set().union(*panel_metrics().values())
    for metric in (
        "ray_glimp_large_ratio",
        "ray_glimp_threshold",
        "ray_glimp_glimpse_entropy_bucket",
        "ray_glimp_requests_total",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_deployment_queued_queries",
        "ray_serve_num_http_requests_total",
    ):
        assert metric in wanted


def test_every_panels_metric_is_exported_by_a_running_app(serve_app: str) -> None:
    body = {"model": "glimp-tiny", "prompt": "count the words", "max_tokens": 4}
    assert httpx.post(f"{serve_app}/v1/completions", json=body, timeout=120).status_code == 200
    missing: dict[str, set[str]] = {}
    deadline = time.monotonic() + 60  # Ray pushes metrics to the node's agent every few seconds
    while time.monotonic() < deadline:
        names = set(re.findall(r"^(ray_[a-z0-9_]+)", exported(), re.MULTILINE))
        missing = {title: metrics - names for title, metrics in panel_metrics().items() if metrics - names}
        if not missing:
            break
        time.sleep(2)
    assert not missing, missing
    assert re.search(r'^ray_glimp_requests_total\{[^}]*key=""', exported(), re.MULTILINE)  # an open server's requests
