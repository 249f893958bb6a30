"""Chat and text completion responses from the loop's results: whole (:meth:`CompletionsWriter.complete`)
or as SSE chunks while the steps complete (:meth:`CompletionsWriter.stream`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from deployments.choices import Interleaved
from deployments.errors import APIError
from deployments.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    FinishReason,
    UsageInfo,
    error_body,
    now,
)
from deployments.sse import DONE, sse
from deployments.tools import ToolUse, delta_tool_calls, tool_calls
from glimp_ray.records import CollabResult, StepRecord


def finish_reason(result: CollabResult) -> Literal["stop", "length"]:
    """How the answer ended (an answer that calls tools ends with ``tool_calls`` instead)."""
    return "length" if result.answer_record.finish_reason == "length" else "stop"


def trace(result: CollabResult) -> dict[str, Any]:
    """The ``glimp`` trace of one collaboration."""
    return {
        "request_id": result.request_id,
        "stop_reason": result.stop_reason,
        "large_step_fraction": result.large_step_fraction,
        "preset": result.params.preset,
        "threshold": result.params.threshold,
        "policy": result.params.policy,
        "mode": result.params.mode,
        "entropy": result.params.entropy,
        "top_k": result.params.top_k,
        "steps": [s.to_dict() for s in result.steps],
        "answer": result.answer_record.to_dict(),
    }


def usage(results: list[CollabResult], n: int) -> UsageInfo:
    """Each prompt's tokens once (not once per choice), every choice's completion tokens."""
    prompt_tokens = sum(r.prompt_tokens for r in results[::n])
    return UsageInfo.of(prompt_tokens, sum(r.completion_tokens for r in results))


@dataclass
class CompletionsWriter:
    """Writes one request's response: a chat completion (``chat``) or a text completion."""

    body: ChatCompletionRequest | CompletionRequest
    request_id: str
    model_name: str
    chat: bool
    tools: ToolUse = field(default_factory=ToolUse)
    created: int = field(default_factory=now)

    def _message(self, result: CollabResult) -> tuple[AssistantMessage, FinishReason]:
        parsed = self.tools.parse(result.answer)
        calls = tool_calls(parsed)
        message = AssistantMessage(content=parsed.content, tool_calls=calls, reasoning_content=result.reasoning)
        return message, "tool_calls" if calls else finish_reason(result)

    def complete(self, results: list[CollabResult]) -> dict[str, Any]:
        """The whole response. One choice: its trace is the response's ``glimp``; several: each
        choice carries its own."""
        traces = [trace(r) if self.body.glimp.return_trace else None for r in results]
        per_choice = len(results) > 1
        envelope: dict[str, Any] = {
            "id": self.request_id,
            "created": self.created,
            "model": self.model_name,
            "usage": usage(results, self.body.n),
            "glimp": None if per_choice else traces[0],
        }
        response: ChatCompletionResponse | CompletionResponse
        if self.chat:
            choices = []
            for i, result in enumerate(results):
                message, finish = self._message(result)
                glimp = traces[i] if per_choice else None
                choices.append(ChatChoice(index=i, message=message, finish_reason=finish, glimp=glimp))
            response = ChatCompletionResponse(**envelope, choices=choices)
        else:
            texts = [
                CompletionChoice(
                    index=i,
                    text=r.answer,
                    reasoning_content=r.reasoning,
                    finish_reason=finish_reason(r),
                    glimp=traces[i] if per_choice else None,
                )
                for i, r in enumerate(results)
            ]
            response = CompletionResponse(**envelope, choices=texts)
        return response.model_dump()

    def _chunk(
        self,
        index: int,
        delta: DeltaMessage | None,
        finish: Any = None,
        usage: UsageInfo | None = None,
        **extensions: Any,
    ) -> str:
        """One SSE event: a chat chunk, or a completion chunk (its text is the delta's content)."""
        envelope: dict[str, Any] = {"id": self.request_id, "created": self.created, "model": self.model_name}
        data: ChatCompletionChunk | CompletionResponse
        if self.chat:
            choices = [ChatChunkChoice(index=index, delta=delta, finish_reason=finish)] if delta is not None else []
            data = ChatCompletionChunk(**envelope, choices=choices, usage=usage, **extensions)
        else:
            texts = []
            if delta is not None:
                text = delta.content or ""
                part = CompletionChoice(
                    index=index,
                    text=text,
                    reasoning_content=delta.reasoning_content,
                    finish_reason=finish,
                )
                texts.append(part)
            data = CompletionResponse(**envelope, choices=texts, usage=usage, **extensions)
        return sse(data.model_dump())

    def _answer_chunks(self, index: int, result: CollabResult) -> list[str]:
        """A choice's answer (its text, then its calls), and its finish."""
        glimp = trace(result) if self.body.glimp.return_trace else None
        if not self.chat:
            return [
                self._chunk(index, DeltaMessage(content=result.answer)),
                self._chunk(index, DeltaMessage(), finish_reason(result), glimp=glimp),
            ]
        message, finish = self._message(result)
        chunks = []
        if message.content is not None or not message.tool_calls:
            chunks.append(self._chunk(index, DeltaMessage(content=message.content or "")))
        if message.tool_calls:
            chunks.append(self._chunk(index, DeltaMessage(tool_calls=delta_tool_calls(message.tool_calls))))
        chunks.append(self._chunk(index, DeltaMessage(), finish, glimp=glimp))
        return chunks

    async def stream(self, events: Interleaved) -> AsyncIterator[str]:
        """The choices' events as SSE chunks, each choice's in order, the choices interleaved as
        their steps complete; then the usage (with ``stream_options.include_usage``) and ``[DONE]``."""
        try:
            if self.chat:
                for index in range(len(events.runs)):
                    yield self._chunk(index, DeltaMessage(role="assistant", content=""))
            results: dict[int, CollabResult] = {}
            async for index, event in events:
                if isinstance(event, StepRecord):
                    # With return_trace, each step's record travels with its text (live trace).
                    live = event.to_dict() if self.body.glimp.return_trace else None
                    yield self._chunk(index, DeltaMessage(reasoning_content=event.text), glimp_step=live)
                else:
                    results[index] = event
                    for chunk in self._answer_chunks(index, event):
                        yield chunk
            options = self.body.stream_options
            if options and options.include_usage:
                yield self._chunk(0, None, usage=usage([results[i] for i in range(len(results))], self.body.n))
        except APIError as exc:
            yield sse(exc.body)
        except Exception as exc:  # the stream has started: report in-band, never hang
            yield sse(error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error"))
        finally:
            await events.aclose()  # releases the sessions (also on client disconnect)
        yield DONE
