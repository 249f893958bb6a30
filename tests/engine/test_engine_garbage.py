"""A finished request leaves no reference cycle behind in the engine: its steps, runs and the
session's KV cache go with their last reference, not at the next full garbage collection (which
a process holding torch's objects runs rarely: a replica's memory grew steadily under a soak until
the cycles were broken)."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from glimp_ray.collab import Collaborator, CollabParams

MESSAGES = ({"role": "user", "content": "What is 6 times 7?"},)
PARAMS = CollabParams(temperature=0, delimiter=" ", step_max_tokens=24, thinking_budget=150, answer_max_tokens=12)


@pytest.fixture
def saved_garbage() -> Iterator[None]:
    """Collections during the test keep what they free in ``gc.garbage`` (``DEBUG_SAVEALL``)."""
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming glimpse", "one call per step"])
def test_requests_leave_no_cyclic_garbage(make_engine: Any, saved_garbage: None, streaming: bool) -> None:
    small, large = make_engine("small"), make_engine("large")
    collab = Collaborator(small, large, PARAMS)

    async def requests() -> None:
        for i, tau in enumerate((0.0, 1e9, 2.0)):  # all large, all small, mixed
            await collab.run(MESSAGES, request_id=f"r{i}", threshold=tau, streaming_glimpse=streaming)

    gc.disable()  # nothing collected behind the test's back
    try:
        asyncio.run(requests())
        assert small.queued == 0 and large.queued == 0
        gc.collect()  # what only the collector would have freed is now in gc.garbage
    finally:
        gc.enable()
    kinds = Counter(type(o).__name__ for o in gc.garbage)
    engine_kinds = {"Sequence", "ChainedRun", "Session", "DynamicCache", "StepRequest", "StepResult"}
    assert not {k: n for k, n in kinds.items() if k in engine_kinds}, kinds.most_common(10)
    tensors = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    assert not tensors, f"{len(tensors)} tensors were only freed by the garbage collector"
