"""What every wire model shares: strict parsing of requests, responses that leave absent
optional fields out, ids, timestamps and OpenAI's error body."""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class WireRequest(BaseModel):
    """A request body, parsed strictly: JSON booleans only, no numbers as strings, finite numbers
    only (vLLM's OpenAI server is the reference); unknown fields are ignored."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class WireResponse(BaseModel):
    """A response object. The optional fields named in ``omitted_when_none`` are left out of the
    JSON when absent; every other field is always written (a chunk's ``finish_reason`` is null
    until the last one, as OpenAI sends it)."""

    omitted_when_none: ClassVar[frozenset[str]] = frozenset(
        {"usage", "glimp", "glimp_step", "role", "content", "reasoning_content", "tool_calls"}
    )

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.omitted_when_none}


class ErrorInfo(WireResponse):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(WireResponse):
    error: ErrorInfo


def new_id(prefix: str, separator: str = "-") -> str:
    return f"{prefix}{separator}{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code)).model_dump()
