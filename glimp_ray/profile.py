"""Engine profiles: one model on one engine, dtype and accelerator, measured, as a versioned JSON.

A profile is what the capacity tools start from instead of curves fitted from live noise:

- ``decode_s``: seconds per generated token each request sees with ``b`` requests decoding at
  once, at ``b`` = 1, 2, 4, ... up to the engine's maximum (the batching curve, measured);
- ``prefill_s_per_token``: seconds per prompt token prefilled;
- ``glimpse_s``: a glimpse's model seconds beyond its prefill (one forward and the entropy);
- ``kv_bytes_per_token`` and ``kv_budget_bytes``: what a token costs and what the engine holds,
  which cap the concurrency at long contexts (:meth:`EngineProfile.kv_concurrency`).

``glimp-ray profile`` measures one; the autoscaler takes it as its prior, the simulator and the
planner build pools from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glimp_ray.capacity import BatchingCurve, Observation

PROFILE_VERSION = 1


@dataclass(frozen=True)
class EngineProfile:
    """A measured engine: its batching curve, prefill and glimpse costs and KV limits."""

    model: str  # the model's name (directory name or hub id)
    engine: str  # hf | vllm
    dtype: str
    accelerator: str  # Ray's accelerator type (L4, A100, ...) or "cpu:<cpu model>"
    decode_s: dict[int, float]  # concurrency -> seconds per generated token a request sees
    prefill_s_per_token: float
    glimpse_s: float
    kv_bytes_per_token: int
    kv_budget_bytes: int
    max_concurrency: int  # max_running / max_num_seqs
    tensor_parallel: int = 1
    version: int = PROFILE_VERSION
    notes: dict[str, Any] = field(default_factory=dict)  # how it was measured (date, host, context)

    def __post_init__(self) -> None:
        if self.version != PROFILE_VERSION:
            raise ValueError(f"profile version {self.version}; this glimp-ray reads version {PROFILE_VERSION}")
        if not self.decode_s or any(b < 1 or s <= 0 for b, s in self.decode_s.items()):
            raise ValueError("a profile needs decode_s: concurrency >= 1 -> seconds per token > 0")
        if self.prefill_s_per_token < 0 or self.glimpse_s < 0:
            raise ValueError("prefill_s_per_token and glimpse_s must be >= 0")
        if self.kv_bytes_per_token <= 0 or self.kv_budget_bytes <= 0 or self.max_concurrency < 1:
            raise ValueError("kv_bytes_per_token, kv_budget_bytes and max_concurrency must be positive")

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return (self.model, self.engine, self.dtype, self.accelerator, self.tensor_parallel)

    def latency(self, concurrency: float) -> float:
        """Seconds per token at ``concurrency``: linear between measured points, the curve's slope
        past the last one, the lone request's below 1."""
        points = sorted(self.decode_s.items())
        if concurrency <= points[0][0]:
            return points[0][1]
        for (b0, s0), (b1, s1) in zip(points, points[1:], strict=False):
            if concurrency <= b1:
                return s0 + (s1 - s0) * (concurrency - b0) / (b1 - b0)
        return points[-1][1] + self.curve().slope_s * (concurrency - points[-1][0])

    def curve(self) -> BatchingCurve:
        """The straight line through the measured points (least squares), for the capacity model."""
        fitted = BatchingCurve.fit([Observation(float(b), s) for b, s in self.decode_s.items()])
        assert fitted is not None
        return fitted

    def kv_concurrency(self, context_tokens: int) -> int:
        """Requests of ``context_tokens`` each that the KV budget holds at once (within the max)."""
        held = self.kv_budget_bytes // max(context_tokens * self.kv_bytes_per_token, 1)
        return int(max(1, min(self.max_concurrency, held)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decode_s"] = {str(b): s for b, s in sorted(self.decode_s.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineProfile:
        data = dict(data)
        data["decode_s"] = {int(b): float(s) for b, s in data.get("decode_s", {}).items()}
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown profile fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EngineProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ValueError(f"profile not found: {path}") from None
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a glimp-ray profile: {exc}") from None


__all__ = ["PROFILE_VERSION", "EngineProfile"]
