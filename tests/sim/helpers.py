"""Made-up profiles and traced requests with known shapes, for the simulator's tests."""

from __future__ import annotations

from glimp_ray.profile import EngineProfile
from glimp_ray.traces import TracedCall, TracedRequest


def profile(decode_s: dict[int, float], glimpse_s: float = 0.0, max_concurrency: int = 64) -> EngineProfile:
    return EngineProfile(
        model="made-up",
        engine="hf",
        dtype="float32",
        accelerator="test",
        decode_s=decode_s,
        prefill_s_per_token=0.0,
        glimpse_s=glimpse_s,
        kv_bytes_per_token=1,
        kv_budget_bytes=1 << 40,
        max_concurrency=max_concurrency,
    )


def one_call(tokens: int, index: int = 0) -> TracedRequest:
    """A request that is a single answer call of ``tokens`` on the large pool."""
    return TracedRequest(f"r{index}", (), TracedCall("large", None, tokens, 0.0), 0.0)


def stepped(steps: list[tuple[str, float, int]], answer_tokens: int = 10) -> TracedRequest:
    """A request with steps ``(route, entropy, tokens)`` and a large answer."""
    calls = tuple(TracedCall(route, entropy, tokens, 0.0) for route, entropy, tokens in steps)
    return TracedRequest("stepped", calls, TracedCall("large", None, answer_tokens, 0.0), 0.0)
