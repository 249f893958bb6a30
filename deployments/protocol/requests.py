"""The OpenAI-compatible wire format (fields in OpenAI's order), with GlimpRouter's knobs
in one marked extension field, ``glimp``.

Requests are parsed strictly from the JSON body (vLLM's OpenAI server is the reference): JSON
booleans only, no numbers as strings, finite numbers only. Fields that would change what the
client gets back and that this server cannot honour (tool calls it must make, JSON output,
log-probabilities, penalties) are refused with a 400 naming the field; fields that change
nothing here (``user``, ``metadata``, ``tools`` the model may ignore, ...) are accepted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from glimp_ray.policies import RandomP

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_STRINGS = 16  # OpenAI allows 4, vLLM any number; eval harnesses send 5 or more
MAX_TOP_K = 20  # vLLM's default max_logprobs, and OpenAI's top_logprobs limit


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = Field(
        description="Text, or a list of text parts (joined with newlines, as vLLM does); null is empty."
    )

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind != "text":
                    raise ValueError(f"content parts of type {kind!r} are not supported; only 'text' parts are")
                if not isinstance(part.get("text"), str):
                    raise ValueError("a text part needs a string 'text'")
        return content

    def text(self) -> str:
        """The message's text: a string as is, text parts joined with newlines, none as empty."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part["text"] for part in self.content)


class StreamOptions(_Wire):
    include_usage: bool = False


class ResponseFormat(_Wire):
    type: str


class GlimpOptions(_Wire):
    """GlimpRouter extensions (send with the openai client as ``extra_body={"glimp": ...}``)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    preset: Literal["glimp", "reference"] | None = Field(
        None, description="Loop rules: this project's (glimp) or the paper's reference code's (reference)."
    )
    threshold: float | None = Field(None, description="τ for this request.")
    policy: Literal["entropy", "small", "large", "random"] | None = None
    mode: Literal["fused", "paper"] | None = None
    entropy: Literal["full", "topk"] | None = Field(
        None, description="Glimpse entropy: full vocabulary (an HF small pool only) or top-k renormalised."
    )
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description=f"k of the top-k entropy, at most {MAX_TOP_K} (vLLM's max_logprobs)."
    )
    random_p: RandomP | None = None
    thinking_budget: int | None = Field(None, ge=1)
    step_max_tokens: int | None = Field(None, ge=1)
    return_trace: bool = Field(False, description="Include the per-step trace in the response.")


class _Request(_Wire):
    model: str
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1, description="Caps the answer's tokens.")
    n: int = Field(1, ge=1, description="Completions per prompt, run side by side (request_limits.max_choices).")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the answer (not the thinking).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    # --- extensions -------------------------------------------------------------
    glimp: GlimpOptions = Field(default_factory=GlimpOptions)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(strings)}")
        if any(not s for s in strings):
            raise ValueError("stop strings must be non-empty")
        return stop

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def answer_max_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported(self) -> tuple[str, str] | None:
        """The first field set to something this server cannot honour: ``(field, why)``."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                return name, f"{name} is not supported (leave it unset or 0)"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        return None

    def overrides(self) -> dict[str, Any]:
        g = self.glimp
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "answer_max_tokens": self.answer_max_tokens,
            "stop": self.stop_strings(),
            "preset": g.preset,
            "threshold": g.threshold,
            "policy": g.policy,
            "mode": g.mode,
            "entropy": g.entropy,
            "top_k": g.top_k,
            "random_p": g.random_p,
            "thinking_budget": g.thinking_budget,
            "step_max_tokens": g.step_max_tokens,
        }


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def answer_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def unsupported(self) -> tuple[str, str] | None:
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        if self.top_logprobs:
            return "top_logprobs", "logprobs are not supported"
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format", f"response_format {self.response_format.type!r} is not supported; only 'text'"
        if self.tool_choice == "required" or isinstance(self.tool_choice, dict):
            return "tool_choice", "tool calls are not supported; tool_choice may be 'auto' or 'none'"
        if isinstance(self.tool_choice, str) and self.tool_choice not in ("auto", "none", "required"):
            return "tool_choice", f"unknown tool_choice {self.tool_choice!r}"
        return super().unsupported()

    def chat_messages(self) -> list[dict[str, str]]:
        return chat_messages(self.messages)

    def text_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)


Prompt = str | list[int]  # text, or token ids of the served (large) model's tokenizer


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A prompt or a list of prompts (each one text or token ids); every prompt gets n choices."
    )
    best_of: int | None = Field(None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, prompt: Any) -> Any:
        """One message for any wrong shape (a union's errors name each member)."""

        def token_ids(value: Any) -> bool:
            return isinstance(value, list) and all(type(t) is int for t in value)

        shapes = "a string, a list of strings, a list of token ids or a list of token-id lists"
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the prompt list must be non-empty")
        one_prompt = isinstance(prompt, str) or token_ids(prompt)
        many = isinstance(prompt, list) and (all(isinstance(p, str) for p in prompt) or all(map(token_ids, prompt)))
        if not (one_prompt or many):
            raise ValueError(f"the prompt must be {shapes}")
        for one in _prompt_list(prompt):
            if not one:
                raise ValueError("every prompt must be non-empty")
            if isinstance(one, list) and min(one) < 0:
                raise ValueError("token ids must be non-negative")
        return prompt

    def unsupported(self) -> tuple[str, str] | None:
        if self.logprobs is not None:
            return "logprobs", "logprobs are not supported"
        if self.echo:
            return "echo", "echo is not supported"
        if self.best_of not in (None, 1, self.n):
            return "best_of", "best_of must equal n (no server-side ranking of choices)"
        if self.suffix:
            return "suffix", "suffix is not supported"
        return super().unsupported()

    def prompts(self) -> list[Prompt]:
        """The prompts, each text or token ids."""
        return _prompt_list(self.prompt)

    def text_chars(self) -> int:
        """The longest prompt's length (characters, or token ids, which decode to at least one each)."""
        return max(len(p) for p in self.prompts())


def _prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[Prompt]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]
    return list(prompt)  # type: ignore[arg-type]


class TokenizeRequest(_Wire):
    """vLLM's ``/tokenize``: a prompt, or chat messages rendered by the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool | None = Field(None, description="Default: true for a prompt, false for messages.")
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def text_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.text()) for m in self.messages or ())


class DetokenizeRequest(_Wire):
    model: str | None = None
    tokens: list[int] = Field(min_length=1)


# --- responses ----------------------------------------------------------------------------

# Optional fields left out of the JSON when absent; every other field is always written (a
# chunk's ``finish_reason`` is null until the last one, as OpenAI sends it).
_OMITTED_WHEN_NONE = frozenset({"usage", "glimp", "glimp_step", "role", "content", "reasoning_content"})


class _Response(BaseModel):
    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in _OMITTED_WHEN_NONE}


class UsageInfo(_Response):
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


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = Field(None, description="The thinking (vLLM's reasoning-parser field).")


class ChatChoice(_Response):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = Field(None, description="This choice's trace, when the response has several.")


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: now())
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = Field(None, description="The per-step trace, with glimp.return_trace.")


class DeltaMessage(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = None
    glimp_step: dict[str, Any] | None = Field(None, description="The step's record, with glimp.return_trace.")


class CompletionChoice(_Response):
    index: int = 0
    text: str
    reasoning_content: str | None = None
    finish_reason: Literal["stop", "length"] | None = None
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = Field(None, description="This choice's trace, when the response has several.")


class CompletionResponse(_Response):
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


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: now())
    owned_by: str = "glimp-ray"


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(_Response):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Response):
    error: ErrorInfo


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template takes them: role and text."""
    return [{"role": m.role, "content": m.text()} for m in messages]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code)).model_dump()
