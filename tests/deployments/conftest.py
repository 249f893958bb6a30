"""One local Ray cluster and one Serve application per test session, on tiny models."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config

pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

APP = "glimp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


APP_LIMITS = {"step_max_tokens": 12, "thinking_budget": 60, "answer_max_tokens": 8}
REQUEST_LIMITS = {
    "max_request_bytes": 256 * 1024,
    "max_prompt_chars": 50_000,
    "max_thinking_budget": 5000,
    "max_step_tokens": 64,
    "max_answer_tokens": 512,
    "max_choices": 8,
}


def app_args(tiny_pair: tuple[Path, Path], traces: Path | None = None) -> dict[str, Any]:
    return {
        **tiny_config(tiny_pair, **APP_LIMITS),
        "serving": {
            "model_name": "glimp-tiny",
            "retries": 6,
            "step_timeout_s": 60,
            "small": {"num_replicas": 2, "num_cpus": 0.1},
            "large": {"num_replicas": 2, "num_cpus": 0.1},
            "router": {"num_cpus": 0.1},
            "tracing": {"exporter": "jsonl", "path": str(traces)} if traces else {"exporter": "none"},
            "request_limits": REQUEST_LIMITS,
        },
    }


@pytest.fixture(scope="session")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the main app's router writes its spans (JSON lines)."""
    return tmp_path_factory.mktemp("traces") / "spans.jsonl"


@pytest.fixture(scope="session")
def serve_app(tiny_pair: tuple[Path, Path], trace_file: Path, ray_cluster: str) -> Iterator[str]:
    """Start the app once on the session's Ray cluster; yields the base URL."""
    from deployments.app import build_app

    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args(tiny_pair, trace_file)), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="session")
def timeout_app(serve_app: str, tiny_pair: tuple[Path, Path]) -> str:
    """A second app whose pool calls time out at once (one replica per pool); its URL."""
    from deployments.app import build_app

    args = app_args(tiny_pair)
    args["serving"] = {
        **args["serving"],
        "step_timeout_s": 0.001,
        "retries": 0,
        "small": {"num_replicas": 1, "num_cpus": 0.1},
        "large": {"num_replicas": 1, "num_cpus": 0.1},
    }
    serve.run(build_app(args), name="timeouts", route_prefix="/timeouts")
    return f"{serve_app}/timeouts"
