"""Stop strings: when generation stops, and the step text the loop sees.

:class:`StopMatcher` decodes only the newest tokens (a window as long in tokens as the longest
stop string is in bytes: every token decodes to at least one byte), so a check costs one small
decode whatever the vocabulary; it uses the tokenizer's public ``decode`` only.
"""

from __future__ import annotations

from typing import Any

from glimp_ray.types import FinishReason

REPLACEMENT = "\ufffd"  # what a decoder emits for an incomplete UTF-8 character
DECODE_KWARGS = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}


class StopMatcher:
    """Whether the generated tokens contain one of ``stops`` (checked after every token, so the
    first hit is the one that just completed)."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]):
        if not stops or any(not s for s in stops):
            raise ValueError("a stop matcher needs non-empty stop strings")
        self.tokenizer = tokenizer
        self.stops = stops
        self.window = max(len(s.encode("utf-8")) for s in stops) + 1

    def __call__(self, generated: list[int]) -> bool:
        tail = self.tokenizer.decode(generated[-self.window :], **DECODE_KWARGS)
        return any(stop in tail for stop in self.stops)


def cut_step_text(
    tokenizer: Any,
    full: str,
    generated: list[int],
    reason: FinishReason,
    stops: tuple[str, ...],
    think_end: str,
    answering: bool,
) -> tuple[str, FinishReason]:
    """The step text the loop sees: up to and including the delimiter, or up to the think-end
    marker (excluded, finish reason ``think_end``), or without the EOS token."""
    if reason == "eos":
        # Decoded without the EOS token: its text must not leak into the transcript.
        return tokenizer.decode(generated[:-1], **DECODE_KWARGS).rstrip(REPLACEMENT), reason
    if reason != "delimiter":
        # A length cut can fall inside a multi-byte character: leave its bytes out of the text
        # (the next call crops the tokens that no longer match).
        return full.rstrip(REPLACEMENT), reason
    hits = [(full.find(s), s) for s in stops if s in full]
    if not hits:
        return full, reason
    index, stop = min(hits)
    if stop == think_end and not answering:
        return full[:index], "think_end"
    return full[: index + len(stop)], "delimiter"
