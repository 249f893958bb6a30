"""Tool calling on the wire (Chat Completions' shapes): the tools a request offers, its choice
among them, the calls an assistant made in the history, and the calls an answer makes."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from deployments.protocol.wire import WireRequest, WireResponse

FUNCTION_NAME = r"^[a-zA-Z0-9_.-]{1,64}$"  # OpenAI's (vLLM also takes dots)


class FunctionDefinition(WireRequest):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="The arguments' JSON Schema.")
    strict: bool | None = None


class ToolDefinition(WireRequest):
    type: Literal["function"]
    function: FunctionDefinition

    def template_tool(self) -> dict[str, Any]:
        """As chat templates take a tool (and as OpenAI sends it): ``{"type", "function"}``."""
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class FunctionName(WireRequest):
    name: str


class NamedToolChoice(WireRequest):
    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def json_object_text(arguments: str) -> str:
    """``arguments`` if it is a JSON object's text; a ValueError saying why not."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments must be a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("arguments must be a JSON object")
    return arguments


class FunctionCallIn(WireRequest):
    name: str
    arguments: str = Field(description="A JSON object, as a string.")

    _json_object = field_validator("arguments")(json_object_text)


class ToolCallIn(WireRequest):
    """A call an assistant message in the history made."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn

    def template_call(self) -> dict[str, Any]:
        """As chat templates take a call: the arguments as an object (Qwen's template writes them
        with ``tojson``; a string would be quoted twice), as vLLM passes them."""
        function = {"name": self.function.name, "arguments": json.loads(self.function.arguments)}
        return {"id": self.id, "type": "function", "function": function}


# --- responses ----------------------------------------------------------------------------


class FunctionCall(WireResponse):
    name: str
    arguments: str


class ToolCall(WireResponse):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaToolCall(WireResponse):
    """One call in a streamed chunk, whole: its id, name and arguments in one delta."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall
