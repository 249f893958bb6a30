"""Shared fixtures: one tiny model pair per test session, built locally (no network)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_EXIT_STATUS: int | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """With ``GLIMP_TESTS_HARD_EXIT=1`` (the vLLM tests), leave as soon as the summary is written:
    vLLM's engine-core clean-up at interpreter exit has been seen to hang after every test passed."""
    if os.environ.get("GLIMP_TESTS_HARD_EXIT") == "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3 if _EXIT_STATUS is None else _EXIT_STATUS)  # never finished: pytest's internal error


def tiny_config(tiny_pair: tuple[Path, Path], **limits: object) -> dict[str, Any]:
    """The core config for the tiny pair: greedy, space-delimited steps, short budgets."""
    small, large = tiny_pair
    return {
        "small": {"model": str(small)},
        "large": {"model": str(large)},
        "routing": {"threshold": 3.2},
        "sampling": {"temperature": 0.0},
        "limits": {"delimiter": " ", "step_max_tokens": 8, "thinking_budget": 32, "answer_max_tokens": 6, **limits},
    }


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from glimp_ray.tiny import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny-models"), seed=0)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local Ray cluster for the whole test session: a head node and two worker nodes
    labelled ``glimp/pool: small`` and ``glimp/pool: large`` (``cluster/local.py``); yields Ray's
    ``Cluster`` (tests may add nodes of their own and remove them)."""
    ray = pytest.importorskip("ray")
    from cluster.local import start_local_cluster

    try:
        cluster = start_local_cluster(temp_dir=str(tmp_path_factory.mktemp("ray")))
    except Exception as exc:  # every Ray test errors with this one line, not 29 tracebacks
        pytest.fail(f"the local Ray cluster for the tests did not start: {type(exc).__name__}: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(local_cluster: Any) -> str:
    """The session's Ray cluster (:func:`local_cluster`), by its GCS address."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


@pytest.fixture
def make_engine(tiny_pair: tuple[Path, Path]) -> Iterator[Callable[..., object]]:
    """``make_engine("small" | "large", **engine_kwargs)``: a fresh engine, closed after the test."""
    from glimp_ray.engine.hf import HFEngine

    engines: list[HFEngine] = []

    def make(which: str = "small", **kwargs: object) -> HFEngine:
        path = tiny_pair[0] if which == "small" else tiny_pair[1]
        engine = HFEngine.load(str(path), **kwargs)  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
