"""A run of easy steps in one vLLM request (the vLLM engine's streaming glimpse).

One request writes step after step. At each delimiter the next token's top-k logprobs are its
glimpse; a hard one aborts the request (that token dropped) and the step is returned ``routed``.
A request stops where a new one would not see the same tokens (a token running past the
delimiter, which a new request would re-tokenize), and the run goes on with a new request.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from glimp_ray.engine.stops import StopMatcher, cut_step_text
from glimp_ray.engine.text import decode_with_ends
from glimp_ray.engine.vllm_params import position_signals, step_params
from glimp_ray.policies import glimpse_routes_large
from glimp_ray.step_run import RunCursor
from glimp_ray.types import FinishReason, GlimpseSignals, StepRequest, StepResult

if TYPE_CHECKING:
    from glimp_ray.engine.vllm import VLLMEngine


async def stream_steps(
    engine: VLLMEngine, step: StepRequest, cursor: RunCursor, following: list[StepRequest | None]
) -> AsyncGenerator[StepResult, None]:
    """Steps of one vLLM request from ``step`` on; when the request stops before the run ends,
    the next step's request is left in ``following``."""
    glimpse, gen = step.glimpse, step.generate
    assert glimpse is not None and gen is not None and glimpse.threshold is not None
    session, prompt = engine.session_prompt(step)
    run = cursor.run
    think_stops = () if step.close_thinking else (engine.think_end,)
    stops = tuple(s for s in (run.delimiter, *think_stops) if s)
    matcher = StopMatcher(engine.tokenizer, stops)
    max_tokens = min(run.thinking_budget - cursor.used, engine.max_context - len(prompt))
    params = step_params(gen.sampling, engine.sampling_defaults, max_tokens, think_stops, glimpse.top_k)
    request_id = f"{step.session_id}-run-{uuid.uuid4().hex[:12]}"
    engine.requests += 1
    engine.enter()
    context, cached, first_call = len(prompt), 0, True
    tokens: list[int] = []  # the current step's
    signals: GlimpseSignals | None = None
    start = first_at = time.perf_counter()
    outputs = engine.llm.generate({"prompt_token_ids": prompt}, params, request_id=request_id)
    finished = False
    try:
        async for out in outputs:
            choice = out.outputs[0]
            if out.num_cached_tokens is not None and first_call:
                cached = out.num_cached_tokens
            logprobs = choice.logprobs or [{}] * len(choice.token_ids)
            last_delta = out.finished
            for j, token in enumerate(choice.token_ids):
                if not tokens:  # a step's first token: its glimpse
                    first_at = time.perf_counter()
                    signals = position_signals(logprobs[j], glimpse.top_k) if logprobs[j] else None
                    if signals is not None and glimpse_routes_large(signals, glimpse):
                        await engine.abort(request_id)  # the glimpsed token is never kept
                        finished = True
                        engine.count(context, cached, 0)
                        result = engine.result(context, cached, [], "", "routed", signals, start, first_at)
                        cursor.advance(result)
                        yield result
                        return
                tokens.append(token)
                reason: FinishReason | None = None
                if token in engine.eos_ids:
                    reason = "eos"
                elif matcher(tokens):
                    reason = "delimiter"
                elif len(tokens) >= cursor.max_tokens:
                    reason = "length"
                elif last_delta and j == len(choice.token_ids) - 1:  # vLLM's own stop
                    if choice.finish_reason == "stop":
                        reason = "delimiter" if isinstance(choice.stop_reason, str) else "eos"
                    else:
                        reason = "length"
                if reason is None:
                    continue
                full, ends = decode_with_ends(engine.tokenizer, tokens)
                session.append(tokens, full, ends)
                step_text, reason = cut_step_text(
                    engine.tokenizer, full, tokens, reason, stops, engine.think_end, step.close_thinking
                )
                engine.count(context, cached, len(tokens))
                result = engine.result(context, cached, tokens, step_text, reason, signals, start, first_at)
                nxt = cursor.advance(result)
                more = j < len(choice.token_ids) - 1 or not last_delta
                if nxt is None or step_text != full or not more:
                    # The request ends here (stopped before the step is handed on, so vLLM
                    # writes nothing more); a new one goes on where it would see other tokens.
                    await engine.abort(request_id)
                    finished = True
                    if nxt is not None:
                        following.append(nxt)
                    yield result
                    return
                yield result
                # The next step continues in this request's KV: its whole context is reused.
                context, first_call, tokens, start = context + len(tokens), False, [], time.perf_counter()
                cached = context
        finished = True
    finally:
        engine.leave()  # first: nothing below may keep the engine counted busy
        if not finished:  # closed or cancelled midway
            await engine.abort(request_id)
        with contextlib.suppress(BaseException):
            await outputs.aclose()
