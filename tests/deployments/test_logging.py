"""Logs an operator can read: per-step lines at DEBUG, client errors one WARNING line."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

pytest.importorskip("ray")

from deployments.config import PoolDeployment  # noqa: E402
from deployments.model_server import ModelServer  # noqa: E402
from glimp_ray.engine.base import PromptTooLongError, StepRejected  # noqa: E402
from glimp_ray.step_server import StepServer  # noqa: E402
from glimp_ray.types import GenerateSpec, StepRequest, StepResult  # noqa: E402

REQUEST = StepRequest("s1:small", prompt="hi", generate=GenerateSpec(4))


class Engine:
    def __init__(self, outcome: StepResult | Exception):
        self.outcome = outcome

    def close(self) -> None:  # the replica closes its engine when it goes
        pass

    async def step(self, request: StepRequest) -> StepResult:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def served(outcome: StepResult | Exception) -> Any:
    """ModelServer.step (the class under Serve's decorator) on a replica with a stand-in engine."""
    replica = StepServer.__new__(ModelServer.func_or_class)
    replica.engine, replica.logger = Engine(outcome), logging.getLogger("ray.serve")  # as its __init__ sets
    replica.step_model_s, replica.step_tokens, replica.calls = 0.0, 0, 0
    return asyncio.run(replica.step(REQUEST))


def test_a_refused_step_is_one_warning_line_and_comes_back_as_a_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ray.serve"):
        result = served(PromptTooLongError("prompt and transcript are 9000 tokens"))
    assert isinstance(result, StepRejected) and result.too_long
    assert isinstance(result.error(), PromptTooLongError)
    records = [r for r in caplog.records if r.name == "ray.serve"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert records[0].exc_info is None and "9000 tokens" in records[0].getMessage()


def test_each_step_is_one_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    result = StepResult([1, 2], "ab", "delimiter", generated_tokens=2, reused_tokens=5, prefill_tokens=1)
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        assert served(result) is result
    assert not [r for r in caplog.records if r.name == "ray.serve"]  # nothing at INFO
    with caplog.at_level(logging.DEBUG, logger="ray.serve"):
        served(result)
    records = [r for r in caplog.records if r.name == "ray.serve"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert "s1:small: delimiter, 2 tokens (5 reused, 1 prefilled)" in records[0].getMessage()


def test_an_engine_failure_is_still_raised() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        served(RuntimeError("boom"))


def test_pool_replicas_log_no_access_line_per_step_by_default() -> None:
    assert PoolDeployment().deployment_options("SmallPool")["logging_config"] == {"enable_access_log": False}
    debug = PoolDeployment(logging_config={"log_level": "DEBUG"}).deployment_options("SmallPool")
    assert debug["logging_config"] == {"log_level": "DEBUG"}


def test_a_bad_logging_config_names_the_field() -> None:
    from deployments.app import build_app
    from glimp_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"serving\.small\.logging_config"):
        build_app({"serving": {"small": {"logging_config": {"log_levl": "DEBUG"}}}})


def test_the_router_logs_a_client_error_as_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    from starlette.requests import Request

    from deployments.errors import APIError, _api_error

    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []})
    with caplog.at_level(logging.DEBUG, logger="ray.serve"):
        response = asyncio.run(_api_error(request, APIError(400, "max_tokens is too big", "invalid_request_error")))
    assert response.status_code == 400
    records = [r for r in caplog.records if r.name == "ray.serve"]
    assert [r.levelno for r in records] == [logging.WARNING] and records[0].exc_info is None
    assert "POST /v1/chat/completions -> 400: max_tokens is too big" in records[0].getMessage()
