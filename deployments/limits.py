"""What one request may ask for: the body read within its byte limit and parsed strictly, then
checked against the model name, the supported fields and ``serving.request_limits``, all before
any model is called."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from deployments.config import RequestLimits
from deployments.errors import APIError, validation_message
from deployments.protocol import ChatCompletionRequest, CompletionRequest

RequestT = TypeVar("RequestT", bound=BaseModel)


async def read_body(raw: Request, limit: int) -> bytes:
    """The body within ``limit`` bytes (413 past it, before any parsing: a declared length is
    checked first, an undeclared one is counted as it arrives). It stays cached on the request,
    so flow control (``flow.py``) and the handler both read it."""
    too_large = APIError(
        413, f"request body is larger than {limit} bytes", "invalid_request_error", code="request_too_large"
    )
    declared = raw.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in raw.stream():  # the cached body, once read
        body += chunk
        if len(body) > limit:
            raise too_large
    raw._body = bytes(body)  # what Starlette's Request.body() caches
    return raw._body


async def read_request(raw: Request, model: type[RequestT], limits: RequestLimits) -> RequestT:
    """Read the body within ``max_request_bytes`` (``read_body``), then parse it strictly."""
    body = await read_body(raw, limits.max_request_bytes)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise APIError(400, message, "invalid_request_error", param) from None


def check_model(model: str | None, model_name: str) -> None:
    """A 404 for a model other than the served one (``None``: the field was left out)."""
    if model is not None and model != model_name:
        raise APIError(
            404,
            f"model {model!r} does not exist; this server has {model_name!r}",
            "invalid_request_error",
            "model",
            "model_not_found",
        )


def check_prompt_chars(chars: int, limits: RequestLimits, param: str) -> None:
    """A 400 ``context_length_exceeded`` for a prompt over ``max_prompt_chars``."""
    if chars > limits.max_prompt_chars:
        raise APIError(
            400,
            f"the prompt is {chars} characters; this server allows at most {limits.max_prompt_chars}",
            "invalid_request_error",
            param,
            "context_length_exceeded",
        )


def check_request(body: ChatCompletionRequest | CompletionRequest, model_name: str, limits: RequestLimits) -> None:
    """The model name, the fields this server can honour, and the caps on tokens and prompt size."""
    check_model(body.model, model_name)
    unsupported = body.unsupported()
    if unsupported is not None:
        raise APIError(400, unsupported[1], "invalid_request_error", unsupported[0], "unsupported_parameter")
    answer_field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    for param, value, cap in (
        (answer_field, body.answer_max_tokens, limits.max_answer_tokens),
        ("glimp.thinking_budget", body.glimp.thinking_budget, limits.max_thinking_budget),
        ("glimp.step_max_tokens", body.glimp.step_max_tokens, limits.max_step_tokens),
    ):
        if value is not None and value > cap:
            raise APIError(400, f"{param} is {value}; this server allows at most {cap}", "invalid_request_error", param)
    check_prompt_chars(body.text_chars(), limits, "messages" if isinstance(body, ChatCompletionRequest) else "prompt")
