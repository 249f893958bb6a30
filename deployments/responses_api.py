"""The Responses API's answer from the loop's result: a reasoning item with the thinking, then
the answer's message (or the function calls it makes); whole, or streamed as OpenAI's events
(``response.created`` ... ``response.completed``), one reasoning delta per step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from deployments.choices import Interleaved
from deployments.completions import trace
from deployments.config import RequestLimits
from deployments.errors import APIError
from deployments.limits import check_model, check_prompt_chars
from deployments.protocol import new_id, now
from deployments.protocol.responses_api import (
    FunctionCallOutput,
    IncompleteDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from deployments.sse import sse
from deployments.tools import ToolUse, tool_calls
from glimp_ray.params import CollabParams
from glimp_ray.records import CollabResult, StepRecord


def check_responses_request(body: ResponsesRequest, model_name: str, limits: RequestLimits) -> None:
    """The model name, the fields this server can honour, and the caps on tokens and input size."""
    check_model(body.model, model_name)
    unsupported = body.unsupported()
    if unsupported is not None:
        raise APIError(400, unsupported[1], "invalid_request_error", unsupported[0], "unsupported_parameter")
    for param, value, cap in (
        ("max_output_tokens", body.max_output_tokens, limits.max_answer_tokens),
        ("glimp.thinking_budget", body.glimp.thinking_budget, limits.max_thinking_budget),
        ("glimp.step_max_tokens", body.glimp.step_max_tokens, limits.max_step_tokens),
    ):
        if value is not None and value > cap:
            raise APIError(400, f"{param} is {value}; this server allows at most {cap}", "invalid_request_error", param)
    check_prompt_chars(body.text_chars(), limits, "input")


@dataclass
class ResponsesWriter:
    """Writes one Responses API response."""

    body: ResponsesRequest
    response_id: str
    model_name: str
    params: CollabParams
    tools: ToolUse = field(default_factory=ToolUse)
    created_at: int = field(default_factory=now)
    reasoning_id: str = field(default_factory=lambda: new_id("rs", "_"))
    message_id: str = field(default_factory=lambda: new_id("msg", "_"))

    def _response(self, result: CollabResult | None) -> ResponseObject:
        """The response object: in progress (no result yet), or finished with its output."""
        body = self.body
        response = ResponseObject(
            id=self.response_id,
            created_at=self.created_at,
            status="in_progress",
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            metadata=body.metadata or {},
            model=self.model_name,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            reasoning=body.reasoning.model_dump() if body.reasoning else {"effort": None, "summary": None},
            temperature=self.params.temperature,
            tool_choice=self._tool_choice(),
            tools=[tool.model_dump(exclude_none=True) for tool in body.tools or ()],
            top_p=self.params.top_p,
            truncation=body.truncation or "disabled",
            user=body.user,
        )
        if result is None:
            return response
        cut = result.answer_record.finish_reason == "length"
        response.status = "incomplete" if cut else "completed"
        response.incomplete_details = IncompleteDetails(reason="max_output_tokens") if cut else None
        response.output = self._output(result)
        response.usage = ResponseUsage(
            input_tokens=result.prompt_tokens,
            output_tokens=result.completion_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=result.thinking_tokens),
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        if body.glimp.return_trace:
            response.glimp = trace(result)
        return response

    def _tool_choice(self) -> str | dict[str, Any]:
        choice = self.body.tool_choice or "auto"  # OpenAI's default, tools or not
        return choice if isinstance(choice, str) else choice.model_dump()

    def _output(self, result: CollabResult) -> list[OutputItem]:
        """The reasoning item (when there was thinking), then the message and the calls."""
        output: list[OutputItem] = []
        if result.steps:
            output.append(ReasoningItem(id=self.reasoning_id, content=[ReasoningText(text=result.reasoning)]))
        parsed = self.tools.parse(result.answer)
        calls = tool_calls(parsed) or []
        if parsed.content is not None or not calls:
            status = "incomplete" if result.answer_record.finish_reason == "length" else "completed"
            text = OutputText(text=parsed.content or "")
            output.append(OutputMessage(id=self.message_id, status=status, content=[text]))
        for call in calls:
            output.append(
                FunctionCallOutput(
                    id=new_id("fc", "_"), call_id=call.id, name=call.function.name, arguments=call.function.arguments
                )
            )
        return output

    def complete(self, results: list[CollabResult]) -> dict[str, Any]:
        return self._response(results[0]).model_dump()

    async def stream(self, events: Interleaved) -> AsyncIterator[str]:
        """OpenAI's streaming events: the response created, the reasoning item with one delta per
        step, then each output item added, its text, done, and the response completed."""
        sequence = 0

        def event(kind: str, **data: Any) -> str:
            nonlocal sequence
            sequence += 1
            return sse({"type": kind, "sequence_number": sequence - 1, **data}, event=kind)

        started = self._response(None).model_dump()
        try:
            yield event("response.created", response=started)
            yield event("response.in_progress", response=started)
            thinking = False
            reasoning = {"item_id": self.reasoning_id, "output_index": 0, "content_index": 0}
            async for _, step in events:
                if isinstance(step, StepRecord):
                    if not thinking:
                        thinking = True
                        opened = ReasoningItem(id=self.reasoning_id, content=[], status="in_progress")
                        yield event("response.output_item.added", output_index=0, item=opened.model_dump())
                        part = ReasoningText(text="").model_dump()
                        yield event("response.content_part.added", **reasoning, part=part)
                    yield event("response.reasoning_text.delta", **reasoning, delta=step.text)
                    continue
                final = self._response(step)
                for index, item in enumerate(final.output):
                    for line in self._item_events(event, index, item):
                        yield line
                kind = "response.completed" if final.status == "completed" else "response.incomplete"
                yield event(kind, response=final.model_dump())
        except APIError as exc:
            error = exc.body["error"]
            yield event("error", code=error["code"] or error["type"], message=error["message"], param=error["param"])
        except Exception as exc:  # the stream has started: report in-band, never hang
            message = f"internal error: {type(exc).__name__}: {exc}"
            yield event("error", code="internal_error", message=message, param=None)
        finally:
            await events.aclose()  # releases the sessions (also on client disconnect)

    def _item_events(self, event: Any, index: int, item: OutputItem) -> list[str]:
        """A finished item's events: the reasoning item's close (it was opened by the first
        step); a message's or a call's added, its text, done."""
        where = {"item_id": item.id, "output_index": index}
        if isinstance(item, ReasoningItem):
            text = item.content[0].text
            return [
                event("response.reasoning_text.done", **where, content_index=0, text=text),
                event("response.content_part.done", **where, content_index=0, part=item.content[0].model_dump()),
                event("response.output_item.done", output_index=index, item=item.model_dump()),
            ]
        if isinstance(item, OutputMessage):
            text = item.content[0].text
            started = item.model_copy(update={"status": "in_progress", "content": []})
            empty = OutputText(text="").model_dump()
            return [
                event("response.output_item.added", output_index=index, item=started.model_dump()),
                event("response.content_part.added", **where, content_index=0, part=empty),
                event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[]),
                event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                event("response.content_part.done", **where, content_index=0, part=item.content[0].model_dump()),
                event("response.output_item.done", output_index=index, item=item.model_dump()),
            ]
        opened = item.model_copy(update={"status": "in_progress", "arguments": ""})
        return [
            event("response.output_item.added", output_index=index, item=opened.model_dump()),
            event("response.function_call_arguments.delta", **where, delta=item.arguments),
            event("response.function_call_arguments.done", **where, name=item.name, arguments=item.arguments),
            event("response.output_item.done", output_index=index, item=item.model_dump()),
        ]
