"""The step-request contract between the collaboration loop and a model pool.

A :class:`StepRequest` carries everything needed to serve it from scratch (the chat
messages or raw prompt plus the transcript so far), so any replica of a pool can answer
it; a replica that has seen the session before just reuses its KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

EntropyKind = Literal["full", "topk"]
GlimpseSignal = Literal["entropy", "top1", "margin"]
StepSignal = Literal["h_step", "ppl_step", "min_prob"]
FinishReason = Literal["delimiter", "think_end", "eos", "length", "routed", "glimpse"]
Message = dict[str, str]


# Sampling where neither the request, the config nor the model's generation_config.json sets a
# value: the paper's temperature and top-p, no top-k, no min-p.
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95


@dataclass(frozen=True)
class SamplingParams:
    """Token sampling; ``temperature == 0`` means greedy decoding.

    A field left ``None`` takes the model's default (its ``generation_config.json``, as vLLM's
    OpenAI server does), else :data:`DEFAULT_TEMPERATURE` / :data:`DEFAULT_TOP_P` and no top-k or
    min-p filter; each engine resolves them for its own model. ``top_k`` keeps the ``k`` most
    likely tokens when sampling (0: off) — not the glimpse's top-k entropy
    (:attr:`GlimpseSpec.top_k`); ``min_p`` drops tokens below ``min_p`` times the top
    probability.
    """

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")


@dataclass(frozen=True)
class GlimpseSignals:
    """What a glimpse measures of the first token's untempered distribution: its ``entropy``
    (nats, of the kind the glimpse asked for) and the probabilities of the two most likely tokens
    (over the whole vocabulary, whatever the entropy's kind)."""

    entropy: float
    top1_prob: float
    top2_prob: float

    @property
    def margin(self) -> float:
        """Top-1 minus top-2 probability."""
        return self.top1_prob - self.top2_prob

    def value(self, signal: GlimpseSignal) -> float:
        """The signal a policy routes on."""
        if signal == "entropy":
            return self.entropy
        if signal == "top1":
            return self.top1_prob
        if signal == "margin":
            return self.margin
        raise ValueError(f"unknown glimpse signal {signal!r}; expected entropy, top1 or margin")


@dataclass(frozen=True)
class StepSignals:
    """What the model's own distributions say about a step it wrote (the post-step policies'
    signals), over every generated token's untempered distribution, from the forwards that wrote
    it: the mean token entropy (nats; on vLLM over its top-k logprobs, renormalised), and the mean
    and the lowest log-probability of the tokens it sampled."""

    tokens: int
    mean_entropy: float
    mean_logprob: float
    min_logprob: float

    @property
    def perplexity(self) -> float:
        """exp(−mean log-probability) of the step's tokens."""
        return math.exp(-self.mean_logprob)

    @property
    def min_prob(self) -> float:
        """The lowest probability of a token the step sampled."""
        return math.exp(self.min_logprob)

    def value(self, signal: StepSignal) -> float:
        """The signal a post-step policy decides on."""
        if signal == "h_step":
            return self.mean_entropy
        if signal == "ppl_step":
            return self.perplexity
        if signal == "min_prob":
            return self.min_prob
        raise ValueError(f"unknown step signal {signal!r}; expected h_step, ppl_step or min_prob")

    @staticmethod
    def of(entropies: list[float], logprobs: list[float]) -> StepSignals | None:
        """From each generated token's entropy and sampled log-probability (``None`` for none)."""
        if not logprobs:
            return None
        return StepSignals(len(logprobs), sum(entropies) / len(entropies), sum(logprobs) / len(logprobs), min(logprobs))


@dataclass(frozen=True)
class GlimpseSpec:
    """Measure the first token's distribution (:class:`GlimpseSignals`); with a threshold, route
    away when ``signal`` is on the large side of it: an entropy above it, a top-1 probability or
    a margin below it. ``top_k`` is the k of the top-k entropy, not a sampling parameter.
    ``probe``: strings whose first tokens' total probability the result reports
    (:attr:`StepResult.probe_prob`; the ``verify`` policy's "yes")."""

    entropy: EntropyKind = "full"
    top_k: int = 20
    threshold: float | None = None
    signal: GlimpseSignal = "entropy"
    probe: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.entropy not in ("full", "topk"):
            raise ValueError(f"entropy must be 'full' or 'topk', got {self.entropy!r}")
        if self.signal not in ("entropy", "top1", "margin"):
            raise ValueError(f"signal must be entropy, top1 or margin, got {self.signal!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if any(not isinstance(p, str) or not p for p in self.probe):
            raise ValueError("probe strings must be non-empty strings")


@dataclass(frozen=True)
class GenerateSpec:
    """Generate tokens until a stop string, the think-end marker, EOS or ``max_tokens``; with
    ``signals`` the result carries the step's :class:`StepSignals`."""

    max_tokens: int = 512
    stop: tuple[str, ...] = ("\n\n",)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    signals: bool = False

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
    # Function tools the chat template renders (OpenAI's shape); None: no tools offered.
    tools: tuple[dict[str, Any], ...] | None = None
    prompt: str | None = None
    transcript: str = ""
    close_thinking: bool = False
    glimpse: GlimpseSpec | None = None
    generate: GenerateSpec | None = None
    # Text after the transcript, tokenized on its own: a verification reads the step and a
    # question after the context, and a later call with the context alone reuses its KV whole.
    continuation: str = ""

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("session_id must be non-empty")
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages or prompt must be given")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        if self.glimpse is None and self.generate is None:
            raise ValueError("a step request needs a glimpse, a generate, or both")
        if self.continuation and self.close_thinking:
            raise ValueError("a continuation follows the thinking; it cannot close it")


@dataclass
class StepResult:
    """What a pool returns for one :class:`StepRequest`.

    ``routed`` means the fused glimpse exceeded the threshold: nothing was generated and
    nothing was kept in the cache. With a glimpse, ``entropy``, ``top1_prob`` and ``top2_prob``
    are its signals (:attr:`glimpse`). Token counters: ``reused_tokens`` came from the
    session's KV cache, ``prefill_tokens`` were forwarded in this call's prefill,
    ``generated_tokens`` were sampled (``len(token_ids)``).
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    entropy: float | None = None
    routed: bool = False
    top1_prob: float | None = None
    top2_prob: float | None = None
    context_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    generated_tokens: int = 0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    replica: str = ""
    fell_back: bool = False  # served by the small pool because the large one was unavailable
    step_signals: StepSignals | None = None  # with GenerateSpec.signals: the written step's
    probe_prob: float | None = None  # with GlimpseSpec.probe: the probe tokens' probability

    @property
    def glimpse(self) -> GlimpseSignals | None:
        """The glimpse's signals; ``None`` without a glimpse. A pool that gives only the entropy
        leaves the probabilities NaN, and a policy reading them raises."""
        if self.entropy is None:
            return None
        nan = float("nan")
        top1 = self.top1_prob if self.top1_prob is not None else nan
        top2 = self.top2_prob if self.top2_prob is not None else nan
        return GlimpseSignals(self.entropy, top1, top2)

    @property
    def model_s(self) -> float:
        """Seconds spent in the model (prefill and decode), excluding queueing."""
        return self.prefill_s + self.decode_s
