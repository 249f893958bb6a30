"""The OpenAI-compatible wire format (fields in OpenAI's order), with GlimpRouter's knobs
in one marked extension field, ``glimp``."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str = Field(min_length=0)


class StreamOptions(BaseModel):
    include_usage: bool = False


class GlimpOptions(BaseModel):
    """GlimpRouter extensions (send with the openai client as ``extra_body={"glimp": ...}``)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, description="τ for this request.")
    policy: Literal["entropy", "small", "large", "random"] | None = None
    mode: Literal["fused", "paper"] | None = None
    random_p: float | None = Field(None, ge=0, le=1)
    thinking_budget: int | None = Field(None, ge=1)
    step_max_tokens: int | None = Field(None, ge=1)
    return_trace: bool = Field(False, description="Include the per-step trace in the response.")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1, description="Caps the answer's tokens.")
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**32)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    # --- extensions -------------------------------------------------------------
    glimp: GlimpOptions = Field(default_factory=GlimpOptions)

    def overrides(self) -> dict[str, Any]:
        g = self.glimp
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "answer_max_tokens": self.max_completion_tokens or self.max_tokens,
            "threshold": g.threshold,
            "policy": g.policy,
            "mode": g.mode,
            "random_p": g.random_p,
            "thinking_budget": g.thinking_budget,
            "step_max_tokens": g.step_max_tokens,
        }


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str = Field(min_length=1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
