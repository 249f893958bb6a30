"""The responses of the chat and text completion APIs (fields in OpenAI's order), whole and as
streamed chunks, with GlimpRouter's trace in marked extension fields."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from deployments.protocol.tools import DeltaToolCall, ToolCall
from deployments.protocol.wire import WireResponse, now

FinishReason = Literal["stop", "length", "tool_calls"]


class UsageInfo(WireResponse):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(WireResponse):
    # ``content`` is null, not absent, when the answer is only tool calls (as OpenAI writes it).
    omitted_when_none: ClassVar[frozenset[str]] = WireResponse.omitted_when_none - {"content"}

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = Field(None, description="The thinking (vLLM's reasoning-parser field).")


class ChatChoice(WireResponse):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = Field(None, description="This choice's trace, when the response has several.")


class ChatCompletionResponse(WireResponse):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: now())
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = Field(None, description="The per-step trace, with glimp.return_trace.")


class DeltaMessage(WireResponse):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    reasoning_content: str | None = None


class ChatChunkChoice(WireResponse):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(WireResponse):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = None
    glimp_step: dict[str, Any] | None = Field(None, description="The step's record, with glimp.return_trace.")


class CompletionChoice(WireResponse):
    index: int = 0
    text: str
    reasoning_content: str | None = None
    finish_reason: Literal["stop", "length"] | None = None
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = Field(None, description="This choice's trace, when the response has several.")


class CompletionResponse(WireResponse):
    """A completion, or one chunk of a streamed one (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: now())
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = None
    glimp_step: dict[str, Any] | None = None


class ModelCard(WireResponse):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: now())
    owned_by: str = "glimp-ray"


class ModelList(WireResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
