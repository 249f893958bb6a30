"""The requests of the OpenAI-compatible API (fields in OpenAI's order), with GlimpRouter's
knobs in one marked extension field, ``glimp``.

Requests are parsed strictly from the JSON body (vLLM's OpenAI server is the reference): JSON
booleans only, no numbers as strings, finite numbers only. Fields that would change what the
client gets back and that this server cannot honour (JSON output, log-probabilities, penalties)
are refused with a 400 naming the field; fields that change nothing here (``user``,
``metadata``, ...) are accepted.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from deployments.protocol.tools import ToolCallIn, ToolChoice, ToolDefinition
from deployments.protocol.wire import INT64_MAX, INT64_MIN, WireRequest
from glimp_ray.policies import PolicyName, RandomP

MAX_STOP_STRINGS = 16  # OpenAI allows 4, vLLM any number; eval harnesses send 5 or more
MAX_TOP_K = 20  # vLLM's default max_logprobs, and OpenAI's top_logprobs limit


class ChatMessage(WireRequest):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = Field(
        description="Text, or a list of text parts (joined with newlines, as vLLM does); null is empty."
    )
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, description="The calls an assistant message made.")
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")

    @model_validator(mode="before")
    @classmethod
    def _calls_may_stand_for_content(cls, message: Any) -> Any:
        """An assistant message that makes calls may leave ``content`` out (OpenAI sends it so)."""
        if isinstance(message, dict) and message.get("role") == "assistant" and message.get("tool_calls"):
            return {"content": None, **message}
        return message

    @model_validator(mode="after")
    def _fields_of_its_role(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

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

    def template_message(self) -> dict[str, Any]:
        """As the chat template takes it: role and text, and the calls made or answered."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.template_call() for call in self.tool_calls]
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
        return message


class StreamOptions(WireRequest):
    include_usage: bool = False


class ResponseFormat(WireRequest):
    type: str


class GlimpOptions(WireRequest):
    """GlimpRouter extensions (send with the openai client as ``extra_body={"glimp": ...}``)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    preset: Literal["glimp", "reference"] | None = Field(
        None, description="Loop rules: this project's (glimp) or the paper's reference code's (reference)."
    )
    threshold: float | None = Field(None, description="τ for this request.")
    policy: PolicyName | None = Field(
        None,
        description="Step routing: entropy (τ in nats, above it goes large), top1 or margin (τ a probability: the "
        "glimpsed token's probability, or top-1 minus top-2, below it goes large); post-step: h_step, ppl_step, "
        "min_prob, cue, verify (the small model writes the step, the large one rewrites it past τ); small, large "
        "or random.",
    )
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
    priority: Literal["interactive", "batch"] | None = Field(
        None,
        description="Admission: batch requests are shed first under load (read by flow control, docs/flow-control.md).",
    )
    shadow: dict[str, float] | None = Field(
        None,
        description="Shadow policies for this request, name -> τ (entropy, top1, margin, h_step, ppl_step, min_prob, "
        "cue): recorded in its trace "
        "beside the acting policy, not counted in the router's metric. docs/routing.md: 'Shadow routing'.",
    )

    def overrides(self) -> dict[str, Any]:
        """The loop's parameters these options set (``None``: the app's)."""
        return {
            "preset": self.preset,
            "threshold": self.threshold,
            "policy": self.policy,
            "mode": self.mode,
            "entropy": self.entropy,
            "top_k": self.top_k,
            "random_p": self.random_p,
            "thinking_budget": self.thinking_budget,
            "step_max_tokens": self.step_max_tokens,
            "shadow": self.shadow,
        }


class _Request(WireRequest):
    """What chat and text completions share."""

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
    # Sampling, top level as vLLM's server takes them (unset: each model's generation_config.json).
    # Not glimp.top_k, which is the glimpse's k.
    top_k: int | None = Field(None, ge=0, description="Sample from the k most likely tokens (0: off).")
    min_p: float | None = Field(None, ge=0, le=1, description="Drop tokens below min_p x the top probability.")
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
        """The loop's parameters this request sets (``None``: the app's)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "sampling_top_k": self.top_k,
            "min_p": self.min_p,
            "answer_max_tokens": self.answer_max_tokens,
            "stop": self.stop_strings(),
            **self.glimp.overrides(),
        }


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = Field(None, description="Default: auto with tools, none without.")
    tools: list[ToolDefinition] | None = None
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
        return super().unsupported()

    def chat_messages(self) -> list[dict[str, Any]]:
        return chat_messages(self.messages)

    def text_chars(self) -> int:
        """The messages' text, their calls' arguments and the tools (written into the prompt)."""
        calls = sum(len(c.function.arguments) for m in self.messages for c in m.tool_calls or ())
        tools = sum(len(json.dumps(t.template_tool())) for t in self.tools or ())
        return sum(len(m.text()) for m in self.messages) + calls + tools


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


class TokenizeRequest(WireRequest):
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


class DetokenizeRequest(WireRequest):
    model: str | None = None
    tokens: list[int] = Field(min_length=1)


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them."""
    return [m.template_message() for m in messages]
