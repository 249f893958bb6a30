"""Every error the router answers, in OpenAI's shape: ``{"error": {"message", "type", "param",
"code"}}``. Client errors (4xx) are logged as one WARNING line; server errors with a traceback."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from deployments.protocol import error_body
from glimp_ray.engine.base import PromptTooLongError
from glimp_ray.pool_clients import PoolUnavailableError

logger = logging.getLogger("ray.serve")


class APIError(Exception):
    """An HTTP error with its OpenAI body."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def api_error(exc: Exception, param: str | None = None) -> APIError:
    """The HTTP error for an exception raised while serving a request (``param``: the input
    field a too-long prompt is blamed on)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return APIError(400, _message(exc), "invalid_request_error", param, "context_length_exceeded")
    if isinstance(exc, PoolUnavailableError):
        return APIError(503, _message(exc), "service_unavailable", code="pool_unavailable")
    if isinstance(exc, ValueError):
        # Bad parameters, and an engine's InvalidRequestError (no chat template, an empty prompt),
        # also when it arrives from a replica as a StepRejected or wrapped by Ray.
        return APIError(400, _message(exc), "invalid_request_error")
    # Anything else is the server's fault, still in OpenAI's shape.
    logger.error("request failed", exc_info=exc)
    return APIError(500, f"{type(exc).__name__}: {_message(exc)}", "internal_error")


_ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    if exc.status < 500:  # the client's mistake: one line, no traceback
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc)
    return JSONResponse(exc.body, status_code=exc.status, headers=getattr(exc, "headers", None))  # a 429's Retry-After


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in OpenAI's error shape."""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    logger.warning("%s -> %d", message, exc.status_code)
    body = error_body(message, _ERROR_TYPES.get(exc.status_code, "invalid_request_error"))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = validation_message(exc.errors())
    logger.warning("%s %s -> 400: %s", request.method, request.url.path, message)
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*|dict\[.*|function-.*|literal\[.*|.*\[.*)$")


def validation_message(errors: Any) -> tuple[str, str | None]:
    """The first error as ``(message, param)``; param is the dotted path of the field."""
    error = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if error.get("type") == "json_invalid":
        return "request body is not valid JSON (UTF-8, nesting within limits, no NaN or Infinity)", None
    loc = [str(p) for p in error.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))]
    param = ".".join(loc) or None
    return (f"{param}: {error['msg']}" if param else str(error["msg"])), param


def _message(exc: BaseException) -> str:
    """The original error's message: an error raised in a replica arrives wrapped by Ray
    (its ``str`` is the replica's whole traceback)."""
    cause = getattr(exc, "cause", None)
    return str(cause) if isinstance(cause, BaseException) else str(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
