"""Which HTTP error an exception becomes: an engine refusing the input is the client's 400, an
engine failing is the server's 500; a glimpse the small pool cannot give is refused up front
(no Ray cluster needed)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from ray.exceptions import RayTaskError  # noqa: E402

from deployments.errors import APIError, api_error  # noqa: E402
from glimp_ray.engine.base import EngineError, InvalidRequestError, PromptTooLongError, StepRejected  # noqa: E402
from glimp_ray.pool_clients import ActorStepClient, PoolUnavailableError  # noqa: E402
from glimp_ray.types import GenerateSpec, StepRequest  # noqa: E402

NO_TEMPLATE = "this model has no chat template; send a raw prompt instead"


class _Remote:
    """A Ray actor method's ``.remote`` returning an awaitable of ``value``."""

    def __init__(self, value: object):
        self.value = value

    def remote(self, *args: object) -> asyncio.Future[object]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(self.value)
        return future


class _Actor:
    def __init__(self, value: object):
        self.step = _Remote(value)


def remote_error(refusal: StepRejected) -> BaseException:
    """What a remote pool's refusal raises in the router, as the loop sees it."""
    request = StepRequest("r:small", prompt="hi", generate=GenerateSpec(4))

    async def call() -> None:
        await ActorStepClient(_Actor(refusal)).step(request)

    with pytest.raises(InvalidRequestError) as caught:
        asyncio.run(call())
    return caught.value


@pytest.mark.parametrize(
    "exc",
    [
        InvalidRequestError(NO_TEMPLATE),
        InvalidRequestError("empty prompt"),
        remote_error(StepRejected.of(InvalidRequestError(NO_TEMPLATE))),
        RayTaskError("step", "Traceback (most recent call last): ...", InvalidRequestError(NO_TEMPLATE)),
    ],
    ids=["no-template", "empty-prompt", "refused-by-a-replica", "wrapped-by-ray"],
)
def test_an_engine_refusing_the_input_is_a_400(exc: Exception) -> None:
    if isinstance(exc, RayTaskError):
        exc = exc.as_instanceof_cause()
    error = api_error(exc, "messages")
    assert error.status == 400
    assert error.body["error"]["type"] == "invalid_request_error"
    assert error.body["error"]["message"] in (NO_TEMPLATE, "empty prompt")  # not Ray's traceback


def test_a_prompt_too_long_names_the_field_and_its_code() -> None:
    error = api_error(remote_error(StepRejected.of(PromptTooLongError("9000 tokens"))), "prompt")
    assert error.status == 400
    assert (error.body["error"]["param"], error.body["error"]["code"]) == ("prompt", "context_length_exceeded")


@pytest.mark.parametrize(
    ("exc", "status"),
    [(EngineError("decode batch failed"), 500), (RuntimeError("boom"), 500), (PoolUnavailableError("gone"), 503)],
)
def test_an_engine_failing_is_the_servers_error(exc: Exception, status: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        error = api_error(exc)
    assert error.status == status
    assert error.body["error"]["type"] in ("internal_error", "service_unavailable")


def respond(config: dict[str, object], glimp: dict[str, object]) -> None:
    """The router's handling of one chat request with ``glimp`` options over ``config``, on a
    stand-in for the replica (no pools: a refused request never reaches them)."""
    from deployments.config import AppConfig
    from deployments.protocol import ChatCompletionRequest
    from deployments.router import GlimpRouter
    from glimp_ray.collab import Collaborator

    app = AppConfig.model_validate(config)
    replica = SimpleNamespace(
        config=app, collab=Collaborator(None, None, app.collab_params()), model_name=app.serving.model_name
    )
    body = ChatCompletionRequest.model_validate(
        {"model": replica.model_name, "messages": [{"role": "user", "content": "hi"}], "glimp": glimp}
    )
    asyncio.run(GlimpRouter.func_or_class._respond(replica, body, {"messages": body.chat_messages()}, None, True))


@pytest.mark.parametrize(
    ("glimp", "param", "message"),
    [
        ({"entropy": "full"}, "glimp.entropy", "runs on vLLM, which gives top-k logprobs only"),
        ({"preset": "reference", "top_k": 5}, None, "preset reference glimpses the top-20 entropy"),
    ],
)
def test_a_glimpse_the_small_pool_cannot_give_is_a_400(glimp: dict[str, object], param: str, message: str) -> None:
    vllm_small = {"small": {"model": "s", "engine": "vllm"}, "large": {"model": "l"}, "routing": {"entropy": "topk"}}
    with pytest.raises(APIError) as caught:
        respond(vllm_small, glimp)
    assert caught.value.status == 400
    assert caught.value.body["error"]["param"] == param and message in caught.value.body["error"]["message"]
