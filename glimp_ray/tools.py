"""Tool calls in a model's text, in the Hermes format that Qwen's and Hermes' chat templates
teach: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

:func:`parse_tool_calls` reads an answer as vLLM's ``hermes`` tool parser does: the text before
the first ``<tool_call>`` is the content, each tag holds one call (the last may be left open by
the end of the answer), and an answer whose calls are not all valid JSON is plain text.
:func:`with_tool_prompt` writes the tools into the system message in the words of Qwen3's chat
template, for engines that render the messages without ``tools``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
_CALLS = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)

# Qwen3's chat template, verbatim: what it writes into the system message for ``tools``.
_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


@dataclass(frozen=True)
class ToolCallText:
    """One call: the function's name and its arguments as a JSON object's text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer split into its text (``None`` when there is none besides the calls) and calls."""

    content: str | None
    tool_calls: tuple[ToolCallText, ...] = ()


def parse_tool_calls(text: str) -> ParsedAnswer:
    """The calls ``text`` makes; with none (or one that is not a JSON object with a string
    ``name``), the whole text is the content."""
    if TOOL_CALL_START not in text:
        return ParsedAnswer(text)
    calls = []
    for closed, left_open in _CALLS.findall(text):
        call = _call(closed or left_open)
        if call is None:
            return ParsedAnswer(text)
        calls.append(call)
    content = text[: text.index(TOOL_CALL_START)]
    return ParsedAnswer(content if content.strip() else None, tuple(calls))


def _call(body: str) -> ToolCallText | None:
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models write the object as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCallText(call["name"], json.dumps(arguments, ensure_ascii=False))


def tool_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The tools' part of the system message, as Qwen3's chat template writes it."""
    listed = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    return _TOOLS_HEAD + listed + _TOOLS_TAIL


def with_tool_prompt(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the tools written into the system message (one is added first when there
    is none): with a Qwen3-style template, the same text ``apply_chat_template(messages,
    tools=tools)`` renders."""
    messages = [dict(m) for m in messages]
    if messages and messages[0]["role"] == "system":
        system = str(messages[0]["content"])
        messages[0]["content"] = system + "\n\n" + tool_prompt(tools)
        return messages
    return [{"role": "system", "content": tool_prompt(tools)}, *messages]
