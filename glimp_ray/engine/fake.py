"""A deterministic fake engine with scripted steps and entropies, for exact routing tests.

Step ``i`` of a transcript (the number of delimiters it already holds) gets ``steps[i]``
(the last one repeats past the end). One character is one token, so ``max_tokens``
truncates the text character-wise; with a ``context``, the prompt and transcript count
against it as the HF engine's tokens do (a full context refuses the call, a step is cut at it).
A ``fail`` hook injects failures: it sees each call and may return the exception to raise.
A step asked for its signals gets its scripted :class:`~glimp_ray.types.StepSignals`; a glimpse
with a probe gets ``probe(request)`` (the verify policy's score).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from glimp_ray.engine.base import PromptTooLongError
from glimp_ray.policies import glimpse_routes_large
from glimp_ray.types import FinishReason, GlimpseSignals, StepRequest, StepResult, StepSignals


@dataclass(frozen=True)
class ScriptedStep:
    """One scripted step and its glimpse's signals."""

    text: str
    entropy: float = 0.0
    finish_reason: FinishReason = "delimiter"
    top1_prob: float = 1.0
    top2_prob: float = 0.0
    signals: StepSignals | None = None  # what a step asked for its signals reports (default: all certain)


class ScriptedEngine:
    """Implements :class:`~glimp_ray.engine.base.StepClient` from a script."""

    def __init__(
        self,
        name: str,
        steps: Sequence[ScriptedStep],
        answer: str = "42",
        delimiter: str = "\n\n",
        context: int | None = None,
        fail: Callable[[int, StepRequest], BaseException | None] | None = None,
        probe: Callable[[StepRequest], float] | None = None,
    ):
        if not steps:
            raise ValueError("a script needs at least one step")
        self.name = name
        self.steps = list(steps)
        self.answer = answer
        self.delimiter = delimiter
        self.context = context
        self.fail = fail  # (the call's index in ``calls``, its request) -> an exception to raise, or None
        self.probe = probe  # a glimpse's probe -> its probability (default 1.0)
        self.calls: list[StepRequest] = []
        self.released: list[str] = []

    def _room(self, request: StepRequest) -> int:
        """Tokens the context has left for this call (unbounded without a context)."""
        if self.context is None:
            return 1 << 30
        prompt = request.prompt or "".join(m["content"] for m in request.messages or ())
        used = len(prompt) + len(request.transcript) + (len("</think>") if request.close_thinking else 0)
        if used >= self.context:
            raise PromptTooLongError(f"prompt and transcript are {used} tokens; {self.name} has {self.context}")
        return self.context - used

    async def step(self, request: StepRequest) -> StepResult:
        self.calls.append(request)
        failure = self.fail(len(self.calls) - 1, request) if self.fail is not None else None
        if failure is not None:
            raise failure
        room = self._room(request)
        if request.close_thinking:
            assert request.generate is not None
            text = self.answer[: min(request.generate.max_tokens, room)]
            finish: FinishReason = "eos" if text == self.answer else "length"
            return self._result(text, finish, None)

        index = request.transcript.count(self.delimiter)
        scripted = self.steps[min(index, len(self.steps) - 1)]
        glimpse = None
        if request.glimpse is not None:
            glimpse = GlimpseSignals(scripted.entropy, scripted.top1_prob, scripted.top2_prob)
            if glimpse_routes_large(glimpse, request.glimpse):
                return self._result("", "routed", glimpse, routed=True)
        if request.generate is None:
            result = self._result("", "glimpse", glimpse)
            if request.glimpse is not None and request.glimpse.probe:
                result.probe_prob = self.probe(request) if self.probe is not None else 1.0
            return result
        text = scripted.text[: min(request.generate.max_tokens, room)]
        finish = scripted.finish_reason if text == scripted.text else "length"
        result = self._result(text, finish, glimpse)
        if request.generate.signals and text:
            result.step_signals = scripted.signals or StepSignals(len(text), 0.0, 0.0, 0.0)
        return result

    async def release(self, session_id: str) -> None:
        self.released.append(session_id)

    def _result(
        self, text: str, finish: FinishReason, glimpse: GlimpseSignals | None, routed: bool = False
    ) -> StepResult:
        return StepResult(
            token_ids=[ord(c) for c in text],
            text=text,
            finish_reason=finish,
            entropy=glimpse.entropy if glimpse else None,
            routed=routed,
            top1_prob=glimpse.top1_prob if glimpse else None,
            top2_prob=glimpse.top2_prob if glimpse else None,
            generated_tokens=len(text),
            replica=self.name,
        )
