"""A deterministic fake engine with scripted steps and entropies, for exact routing tests.

Step ``i`` of a transcript (the number of delimiters it already holds) gets ``steps[i]``
(the last one repeats past the end). One character is one token, so ``max_tokens``
truncates the text character-wise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from glimp_ray.types import FinishReason, StepRequest, StepResult


@dataclass(frozen=True)
class ScriptedStep:
    text: str
    entropy: float = 0.0
    finish_reason: FinishReason = "delimiter"


class ScriptedEngine:
    """Implements :class:`~glimp_ray.engine.base.StepClient` from a script."""

    def __init__(
        self,
        name: str,
        steps: Sequence[ScriptedStep],
        answer: str = "42",
        delimiter: str = "\n\n",
    ):
        if not steps:
            raise ValueError("a script needs at least one step")
        self.name = name
        self.steps = list(steps)
        self.answer = answer
        self.delimiter = delimiter
        self.calls: list[StepRequest] = []
        self.released: list[str] = []

    async def step(self, request: StepRequest) -> StepResult:
        self.calls.append(request)
        if request.close_thinking:
            assert request.generate is not None
            text = self.answer[: request.generate.max_tokens]
            finish: FinishReason = "eos" if text == self.answer else "length"
            return self._result(text, finish, None)

        index = request.transcript.count(self.delimiter)
        scripted = self.steps[min(index, len(self.steps) - 1)]
        entropy = None
        if request.glimpse is not None:
            entropy = scripted.entropy
            threshold = request.glimpse.threshold
            if threshold is not None and entropy > threshold:
                return self._result("", "routed", entropy, routed=True)
        if request.generate is None:
            return self._result("", "glimpse", entropy)
        text = scripted.text[: request.generate.max_tokens]
        finish = scripted.finish_reason if text == scripted.text else "length"
        return self._result(text, finish, entropy)

    async def release(self, session_id: str) -> None:
        self.released.append(session_id)

    def _result(self, text: str, finish: FinishReason, entropy: float | None, routed: bool = False) -> StepResult:
        return StepResult(
            token_ids=[ord(c) for c in text],
            text=text,
            finish_reason=finish,
            entropy=entropy,
            routed=routed,
            generated_tokens=len(text),
            replica=self.name,
        )
