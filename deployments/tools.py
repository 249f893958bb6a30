"""Tool calling in the API: what a request's ``tools`` and ``tool_choice`` let the answer do, the
messages as the chat template then takes them, and the calls parsed from the answer as
OpenAI's ``tool_calls``.

The tools go with every step call to each model's own chat template (``apply_chat_template(...,
tools=...)``, in ``glimp_ray/engine/text.py``); a template that renders no tools gets them in the
system message in the words of Qwen3's template (:func:`glimp_ray.tools.with_tool_prompt`).
Calls are parsed in the Hermes format those words ask for. ``tool_choice`` ``required`` or a
named function would need constrained decoding, which these engines are not run with: a 400
naming the engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from deployments.errors import APIError
from deployments.protocol.tools import DeltaToolCall, FunctionCall, ToolCall, ToolChoice, ToolDefinition
from glimp_ray.tools import ParsedAnswer, parse_tool_calls


@dataclass(frozen=True)
class ToolUse:
    """The tools the answer may call (none: the answer is text, as without tools)."""

    tools: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(
        cls, tools: list[ToolDefinition] | None, choice: ToolChoice | None, engine: str, pool: str, param: str
    ) -> ToolUse:
        """From a request's ``tools`` and ``tool_choice`` (``param``: that field's name); the
        answer is written by ``pool``, served by ``engine``."""
        if choice is not None and choice not in ("auto", "none"):
            wanted = f"function {choice.function.name!r}" if not isinstance(choice, str) else repr(choice)
            if not tools:
                raise APIError(400, f"tool_choice {wanted} needs tools", "invalid_request_error", param)
            raise APIError(
                400,
                f"tool_choice {wanted} needs constrained decoding, which the {engine} engine serving the "
                f"{pool} pool (it writes the answer) is not run with here; use 'auto' or 'none'",
                "invalid_request_error",
                param,
                "unsupported_parameter",
            )
        if not tools or choice == "none":
            return cls()
        return cls(tuple(tool.template_tool() for tool in tools))

    def inputs(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The loop's inputs: the messages, and the tools every pool's chat template renders."""
        return {"messages": messages, "tools": self.tools or None}

    def parse(self, answer: str) -> ParsedAnswer:
        """The answer's text and the calls it makes (none without tools)."""
        return parse_tool_calls(answer) if self.tools else ParsedAnswer(answer)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_calls(parsed: ParsedAnswer) -> list[ToolCall] | None:
    """The answer's calls as a message's ``tool_calls`` (``None`` when it makes none)."""
    if not parsed.tool_calls:
        return None
    calls = parsed.tool_calls
    return [ToolCall(id=call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]


def delta_tool_calls(calls: list[ToolCall]) -> list[DeltaToolCall]:
    """The calls as one streamed delta: each call whole, with its index."""
    return [DeltaToolCall(index=i, id=c.id, function=c.function) for i, c in enumerate(calls)]
