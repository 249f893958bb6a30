"""The step-request contract between the collaboration loop and a model pool.

A :class:`StepRequest` carries everything needed to serve it from scratch (the chat
messages or raw prompt plus the transcript so far), so any replica of a pool can answer
it; a replica that has seen the session before just reuses its KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

EntropyKind = Literal["full", "topk"]
FinishReason = Literal["delimiter", "think_end", "eos", "length", "routed", "glimpse"]
Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """Token sampling; ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.6
    top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class GlimpseSpec:
    """Compute the first-token entropy; with a threshold, route away when it is exceeded."""

    entropy: EntropyKind = "full"
    top_k: int = 20
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.entropy not in ("full", "topk"):
            raise ValueError(f"entropy must be 'full' or 'topk', got {self.entropy!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


@dataclass(frozen=True)
class GenerateSpec:
    """Generate tokens until a stop string, the think-end marker, EOS or ``max_tokens``."""

    max_tokens: int = 512
    stop: tuple[str, ...] = ("\n\n",)
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass(frozen=True)
class StepRequest:
    """One call to a pool.

    ``transcript`` is the thinking text generated so far (it starts inside the thinking
    section). With ``close_thinking`` the engine appends its own think-end marker and the
    call writes the answer; the think-end marker is then no longer a stop.
    """

    session_id: str
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    transcript: str = ""
    close_thinking: bool = False
    glimpse: GlimpseSpec | None = None
    generate: GenerateSpec | None = None

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("session_id must be non-empty")
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages or prompt must be given")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        if self.glimpse is None and self.generate is None:
            raise ValueError("a step request needs a glimpse, a generate, or both")


@dataclass
class StepResult:
    """What a pool returns for one :class:`StepRequest`.

    ``routed`` means the fused glimpse exceeded the threshold: nothing was generated and
    nothing was kept in the cache. Token counters: ``reused_tokens`` came from the
    session's KV cache, ``prefill_tokens`` were forwarded in this call's prefill,
    ``generated_tokens`` were sampled (``len(token_ids)``).
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    entropy: float | None = None
    routed: bool = False
    context_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    generated_tokens: int = 0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    replica: str = ""
    fell_back: bool = False  # served by the small pool because the large one was unavailable

    @property
    def model_s(self) -> float:
        """Seconds spent in the model (prefill and decode), excluding queueing."""
        return self.prefill_s + self.decode_s
