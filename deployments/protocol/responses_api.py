"""OpenAI's Responses API on the wire, stateless: the request (``input`` as text or items,
``instructions``, function tools) and the response object with its output items, in OpenAI's
field order; GlimpRouter's knobs in the extension field ``glimp``.

Earlier turns come back as input items: messages, ``function_call`` and
``function_call_output`` items become the chat history; ``reasoning`` items are dropped (chat
templates drop earlier thinking too). What needs stored state (``previous_response_id``,
``conversation``, ``background``, item references) is refused with a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator

from deployments.protocol.requests import GlimpOptions
from deployments.protocol.tools import (
    FUNCTION_NAME,
    FunctionDefinition,
    FunctionName,
    NamedToolChoice,
    ToolDefinition,
    json_object_text,
)
from deployments.protocol.wire import WireRequest, WireResponse, now

# --- input items --------------------------------------------------------------------------


class TextPart(WireRequest):
    type: Literal["input_text", "output_text"]
    text: str


class MessageItem(WireRequest):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        for part in content if isinstance(content, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text"):
                raise ValueError(f"content parts of type {kind!r} are not supported; only input_text and output_text")
        return content

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ReasoningInputItem(WireRequest):
    type: Literal["reasoning"]


class FunctionCallItem(WireRequest):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str

    _json_object = field_validator("arguments")(json_object_text)


class FunctionCallOutputItem(WireRequest):
    type: Literal["function_call_output"]
    call_id: str
    output: str


InputItem = MessageItem | ReasoningInputItem | FunctionCallItem | FunctionCallOutputItem
_ITEMS: dict[str, type[InputItem]] = {
    "message": MessageItem,
    "reasoning": ReasoningInputItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def _item(index: int, raw: dict[str, Any]) -> InputItem:
    """One input item, by its ``type`` (a message may leave it out); a ValueError naming the item."""
    kind = raw.get("type", "message")
    model = _ITEMS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(_ITEMS)
        raise ValueError(f"input[{index}]: items of type {kind!r} are not supported; only {known}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"] if not str(p).startswith(("str", "list[")))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ValueError(f"input[{index}].{where}: {message}") from None


# --- tools --------------------------------------------------------------------------------


class FunctionTool(WireRequest):
    """A function tool, Responses-style: the function's fields beside ``type``."""

    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat_tool(self) -> ToolDefinition:
        function = FunctionDefinition(
            name=self.name, description=self.description, parameters=self.parameters, strict=self.strict
        )
        return ToolDefinition(type="function", function=function)


class FunctionToolChoice(WireRequest):
    type: Literal["function"]
    name: str


class Reasoning(WireRequest):
    effort: str | None = None
    summary: str | None = None


class TextFormat(WireRequest):
    type: str


class TextOptions(WireRequest):
    format: TextFormat | None = None


# --- the request --------------------------------------------------------------------------


class ResponsesRequest(WireRequest):
    n: ClassVar[int] = 1  # one output per request

    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    input: str | list[dict[str, Any]] = Field(description="Text (one user message) or a list of input items.")
    instructions: str | None = Field(None, description="A system message put before the input.")
    max_output_tokens: int | None = Field(None, ge=1, description="Caps the answer's tokens (not the thinking).")
    metadata: dict[str, str] | None = None
    model: str
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    store: bool | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    text: TextOptions | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    tools: list[FunctionTool] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, gt=0, le=1)
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    # --- extensions -------------------------------------------------------------
    top_k: int | None = Field(None, ge=0, description="Sample from the k most likely tokens (0: off).")
    min_p: float | None = Field(None, ge=0, le=1, description="Drop tokens below min_p x the top probability.")
    glimp: GlimpOptions = Field(default_factory=GlimpOptions)

    @field_validator("input")
    @classmethod
    def _known_items(cls, input: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(input, list):
            if not input:
                raise ValueError("the input list must be non-empty")
            for index, raw in enumerate(input):
                _item(index, raw)
        elif not input:
            raise ValueError("the input must be non-empty")
        return input

    def items(self) -> list[InputItem]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return [_item(i, raw) for i, raw in enumerate(self.input)]

    @property
    def answer_max_tokens(self) -> int | None:
        return self.max_output_tokens

    def unsupported(self) -> tuple[str, str] | None:
        """The first field set to something this server cannot honour: ``(field, why)``."""
        for name in ("previous_response_id", "conversation"):
            if getattr(self, name):
                return name, f"{name} is not supported: this server stores nothing; send the whole input"
        if self.background:
            return "background", "background responses are not supported"
        if self.top_logprobs:
            return "top_logprobs", "logprobs are not supported"
        if self.text and self.text.format and self.text.format.type != "text":
            return "text.format", f"text.format {self.text.format.type!r} is not supported; only 'text'"
        return None

    def overrides(self) -> dict[str, Any]:
        """The loop's parameters this request sets (``None``: the app's)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": None,
            "sampling_top_k": self.top_k,
            "min_p": self.min_p,
            "answer_max_tokens": self.answer_max_tokens,
            "stop": (),
            **self.glimp.overrides(),
        }

    def chat_messages(self) -> list[dict[str, Any]]:
        """The instructions and input items as chat messages (as the chat template takes them):
        function calls join the assistant message before them, their outputs are tool messages."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        for item in self.items():
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": item.text()})
            elif isinstance(item, FunctionCallItem):
                function = {"name": item.name, "arguments": json.loads(item.arguments)}
                if not (messages and messages[-1]["role"] == "assistant"):
                    messages.append({"role": "assistant", "content": ""})
                call = {"id": item.call_id, "type": "function", "function": function}
                messages[-1].setdefault("tool_calls", []).append(call)
            elif isinstance(item, FunctionCallOutputItem):
                messages.append({"role": "tool", "content": item.output, "tool_call_id": item.call_id})
        return messages

    def text_chars(self) -> int:
        """The instructions, the items' text and the tools (written into the prompt)."""
        chars = len(self.instructions or "") + sum(len(json.dumps(t.model_dump())) for t in self.tools or ())
        for item in self.items():
            if isinstance(item, MessageItem):
                chars += len(item.text())
            elif isinstance(item, FunctionCallOutputItem):
                chars += len(item.output)
            elif isinstance(item, FunctionCallItem):
                chars += len(item.arguments)
        return chars

    def chat_tools(self) -> list[ToolDefinition] | None:
        return [tool.chat_tool() for tool in self.tools] if self.tools is not None else None

    def chat_tool_choice(self) -> Literal["none", "auto", "required"] | NamedToolChoice | None:
        if isinstance(self.tool_choice, FunctionToolChoice):
            return NamedToolChoice(function=FunctionName(name=self.tool_choice.name))
        return self.tool_choice


# --- the response -------------------------------------------------------------------------


class _Out(WireResponse):
    # Responses write their absent fields as null, as OpenAI does; only the extension is left out.
    omitted_when_none: ClassVar[frozenset[str]] = frozenset({"glimp"})


class ReasoningText(_Out):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(_Out):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[ReasoningText]
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class OutputText(_Out):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(_Out):
    id: str
    type: Literal["message"] = "message"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallOutput(_Out):
    """A call the answer makes (``type: "function_call"``)."""

    id: str
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    call_id: str
    name: str
    arguments: str


OutputItem = ReasoningItem | OutputMessage | FunctionCallOutput


class InputTokensDetails(_Out):
    cached_tokens: int = 0


class OutputTokensDetails(_Out):
    reasoning_tokens: int


class ResponseUsage(_Out):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(_Out):
    reason: Literal["max_output_tokens"]


class ResponseObject(_Out):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: now())
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = False
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    # --- extensions -------------------------------------------------------------
    glimp: dict[str, Any] | None = Field(None, description="The per-step trace, with glimp.return_trace.")
