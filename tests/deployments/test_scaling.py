"""On the session's multi-node cluster (a head, a ``glimp/pool: small`` and a ``glimp/pool: large``
node): each pool lands on its node type, and the routing-ratio policy scales the large pool up
when a lower threshold (through the router's user_config) sends more steps to it, and back down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deployments import serve_state
from tests.deployments.conftest import app_args
from tests.deployments.serve_state import wait_for


def deploy(config: dict[str, Any]) -> None:
    serve_state.deploy_config(config["applications"])


def running(deployment: str) -> int:
    return serve_state.running(SCALED, deployment)


def active(deployment: str) -> int:
    return serve_state.active(SCALED, deployment)


def replica_nodes(deployment: str) -> list[str]:
    return serve_state.replica_nodes(SCALED, deployment)


def explain(url: str | None = None) -> str:
    """The cluster's state and, given the app's URL, the routes of one traced request (did the
    router take the new threshold?)."""
    state = serve_state.cluster_state(SCALED)
    if url is None:
        return state
    body = {"model": "glimp-tiny", "prompt": "probe", "max_tokens": 8, "glimp": {"return_trace": True}}
    try:
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
        routes = [step.get("model") for step in reply.get("glimp", {}).get("steps", [])]
    except (httpx.HTTPError, ValueError) as exc:
        routes = [f"probe failed: {exc}"]
    return f"{state}\nprobe request's step routes: {routes}"


ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

SCALED = "scaled"
ALL_SMALL, ALL_LARGE = 1e9, 0.0  # thresholds: no glimpse is above 1e9 nats, every one is above 0
AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "upscale_delay_s": 0,
    "downscale_delay_s": 3,
    # Reports averaged over 10 s: on a loaded 2-core machine a replica's reports can come late, and
    # a look-back shorter than their gaps leaves the policy windows with none (a pool that reads idle).
    "metrics_interval_s": 1,
    "look_back_period_s": 10,
}


def scaled_config(tiny_pair: tuple[Path, Path], threshold: float) -> dict[str, Any]:
    args = app_args(tiny_pair)
    args["limits"]["answer_model"] = "small"  # so the all-small phase leaves the large pool idle
    args["serving"] = {
        **args["serving"],
        "metrics_window_s": 4,
        "small": {
            "num_replicas": "auto",
            "num_cpus": 0.1,
            "label_selector": {"glimp/pool": "small"},
            "autoscaling_config": {**AUTOSCALING, "max_replicas": 2},
        },
        "large": {
            "num_replicas": "auto",
            "num_cpus": 0.1,
            "label_selector": {"glimp/pool": "large"},
            "autoscaling_config": {**AUTOSCALING, "max_replicas": 3},
        },
    }
    # Planning one call per replica, with next to no queue allowed, makes a pool that runs a few
    # calls at once want its maximum on this shared 2-core machine, whatever its absolute speed.
    policy_kwargs = {
        pool: {"max_concurrency": 1, "target_queue_per_replica": 0.25, "latency_slack": 1.0, "smoothing_s": 1}
        for pool in ("small", "large")
    }
    return {
        "applications": [
            {
                "name": SCALED,
                "route_prefix": f"/{SCALED}",
                "import_path": "deployments.app:build_app",
                "args": args,
                "autoscaling_policy": {
                    "policy_function": "deployments.autoscaling:RoutingRatioPolicy",
                    "policy_kwargs": {**policy_kwargs, "log_every_s": 5},  # what a failed wait prints
                },
                "deployments": [{"name": "GlimpRouter", "user_config": {"routing": {"threshold": threshold}}}],
            }
        ]
    }


class Load:
    """Closed-loop clients sending completions, and a log of replica counts every second."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.clients = url, clients
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.phase = "start"
        self.timeline: list[tuple[float, str, int, int]] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        self.threads.append(threading.Thread(target=self._watch, daemon=True))
        self.start = time.monotonic()

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=60) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                body = {
                    "model": "glimp-tiny",
                    "prompt": f"client {index} request {n}: count the words",
                    "max_tokens": 8,
                }
                try:
                    response = client.post(f"{self.url}/v1/completions", json=body)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1

    def _watch(self) -> None:
        while not self.stop.is_set():
            self.timeline.append((time.monotonic() - self.start, self.phase, active("SmallPool"), active("LargePool")))
            time.sleep(1.0)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)
        print(f"\nreplica counts over time ({self.ok} requests ok, {self.failed} failed):")
        print("   t (s)  phase        small  large")
        for t, phase, small, large in self.timeline:
            print(f"  {t:6.1f}  {phase:<11}  {small:5d}  {large:5d}")


@pytest.fixture(scope="module")
def scaled_app(serve_app: str, tiny_pair: tuple[Path, Path]) -> Iterator[str]:
    deploy(scaled_config(tiny_pair, ALL_SMALL))
    wait_for(lambda: running("GlimpRouter") == 1 and running("LargePool") == 1, 120, "the scaled app to start")
    try:
        yield f"{serve_app}/{SCALED}"
    finally:
        serve.delete(SCALED)


def test_each_pool_lands_on_its_node_type(scaled_app: str) -> None:
    pools = {n["NodeID"]: n["Labels"].get("glimp/pool") for n in ray.nodes() if n["Alive"]}
    small, large = replica_nodes("SmallPool"), replica_nodes("LargePool")
    assert small and large
    assert {pools[node] for node in small} == {"small"}
    assert {pools[node] for node in large} == {"large"}


def test_large_pool_follows_the_threshold(scaled_app: str, tiny_pair: tuple[Path, Path]) -> None:
    with Load(scaled_app, clients=8) as load:
        load.phase = "all-small"
        time.sleep(10)
        assert active("LargePool") == 1  # idle large pool stays at its minimum

        load.phase = "all-large"
        deploy(scaled_config(tiny_pair, ALL_LARGE))  # user_config: the router reconfigures in place
        # The policy's decision is what is tested: replicas it adds count from STARTING (on this
        # loaded 2-core machine a new replica can take over a minute to load its model).
        wait_for(lambda: active("LargePool") >= 2, 90, "the large pool to scale up", lambda: explain(scaled_app))
        wait_for(lambda: active("LargePool") == 3, 60, "the large pool to reach its maximum", explain)
        # Scaled-up replicas land on the large node too.
        nodes = {n["NodeID"]: n["Labels"].get("glimp/pool") for n in ray.nodes() if n["Alive"]}
        assert {nodes[node] for node in replica_nodes("LargePool")} == {"large"}

        load.phase = "all-small"
        deploy(scaled_config(tiny_pair, ALL_SMALL))
        wait_for(lambda: active("LargePool") == 1, 120, "the large pool to scale back down", explain)
        time.sleep(3)
    assert load.ok > 0
    assert load.failed == 0
    counts = [large for _, _, _, large in load.timeline]
    assert max(counts) == 3 and counts[-1] == 1
