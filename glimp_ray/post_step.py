"""Post-step policies in the loop: the small model writes the step, then its signal keeps it or
the large model writes it again from the same context (:class:`~glimp_ray.policies.PostStepPolicy`).

The signals cost no extra pass on the small pool: the engine computes them in the forwards that
write the step (``GenerateSpec.signals``). ``verify`` adds one large-pool call: a glimpse over the
context, the step and a verification suffix, whose probe is the probability of the "yes"
tokens. That call leaves the context in the large pool's session cache, so a rewrite prefills
only what differs from it (the tokens after the shared context).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from glimp_ray.params import CollabParams
from glimp_ray.policies import LARGE, SMALL, PostStepPolicy, Route
from glimp_ray.records import StepRecord
from glimp_ray.types import GenerateSpec, GlimpseSpec, StepResult

# (route, transcript, glimpse, generate, continuation) -> the pool's result
Call = Callable[[Route, str, GlimpseSpec | None, GenerateSpec | None, str], Awaitable[StepResult]]


@dataclass(frozen=True)
class PostStep:
    """How a post-step policy decided one step."""

    value: float | None  # the signal it decided on (None: cue, or a draft with no tokens)
    rewritten: bool
    draft: StepResult  # the small model's step (the step itself when kept)
    check: StepResult | None  # verify's call to the large pool
    draft_s: float  # wall seconds of the small model's call
    check_s: float  # wall seconds of verify's call

    def annotate(self, record: StepRecord) -> StepRecord:
        """``record`` (the step as written) with the decision: the signal, whether the step was
        rewritten, and what the discarded draft and the check cost."""
        record.post_signal = self.value
        record.rewritten = self.rewritten
        record.check_s = self.check_s
        if self.check is not None:
            record.check_prefill_tokens = self.check.prefill_tokens
        if self.rewritten:
            record.draft_tokens = self.draft.generated_tokens
            record.draft_s = self.draft_s
        return record


async def write_post_step(
    call: Call,
    policy: PostStepPolicy,
    params: CollabParams,
    transcript: str,
    generate: Callable[[Route], GenerateSpec],
    joined: Callable[[str], str],
) -> tuple[Route, StepResult, PostStep]:
    """The step's route, the result that wrote it, and how it was decided."""
    glimpse = GlimpseSpec(params.entropy, params.top_k)  # free in the draft's forward: records and shadows
    start = time.perf_counter()
    draft = await call(SMALL, transcript, glimpse, generate(SMALL), "")
    draft_s = time.perf_counter() - start
    check: StepResult | None = None
    check_s = 0.0
    if draft.generated_tokens == 0:
        return SMALL, draft, PostStep(None, False, draft, None, draft_s, 0.0)  # nothing to judge
    if policy.name == "verify":
        start = time.perf_counter()
        probe = GlimpseSpec(params.entropy, params.top_k, probe=params.verify_tokens)
        # The step and the question as a continuation: the context stays whole in the large
        # pool's session cache, so a rewrite prefills none of it again.
        check = await call(LARGE, transcript, probe, None, joined(draft.text) + params.verify_suffix)
        check_s = time.perf_counter() - start
    value = policy.value(draft.step_signals, check.probe_prob if check is not None else None)
    if not policy.rewrites(value, draft.text):
        return SMALL, draft, PostStep(value, False, draft, check, draft_s, check_s)
    result = await call(LARGE, transcript, None, generate(LARGE), "")
    return LARGE, result, PostStep(value, True, draft, check, draft_s, check_s)
