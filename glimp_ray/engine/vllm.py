"""The vLLM engine: step requests on vLLM's ``AsyncLLM`` (paged KV, prefix caching, continuous
batching), behind the same :class:`~glimp_ray.engine.base.StepClient` contract as HFEngine.

- **Glimpse**: the first token's top-k logprobs (vLLM's raw logprobs, before temperature),
  renormalised: the paper's reference entropy. Full-vocabulary entropy is not available here.
- **Fused mode**: the step streams; right after its first token, if the entropy exceeds τ the
  request is aborted and ``routed`` returned (nothing else was generated). **Paper mode** sends a
  separate 1-token request, as the reference code does.
- **Glimpse signals**: the same top-k logprobs give the top-1 and top-2 probabilities (the
  ``top1`` and ``margin`` policies); a non-finite one is an engine error.
- **Sampling defaults**: what the request leaves unset takes the model's
  ``generation_config.json`` defaults, as vLLM's OpenAI server does (``AsyncLLM`` does not).
- **Runs of easy steps** (streaming glimpse, :meth:`VLLMEngine.run_steps`,
  :mod:`~glimp_ray.engine.vllm_run`): one vLLM request writes step after step. Under greedy
  decoding the steps are those of one call per step; with sampling, a request's steps draw from
  its one seeded stream (reproducible, but not the per-step seeds).
- **Sessions**: each session keeps the tokens it sent and generated (never re-tokenized, as in
  HFEngine); vLLM's automatic prefix caching reuses their KV, and its per-request cached-token
  count fills ``reused_tokens`` / ``prefill_tokens``. ``release`` forgets the tokens; the KV
  blocks age out of vLLM's cache by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from glimp_ray.engine.base import InvalidRequestError, PromptTooLongError
from glimp_ray.engine.model_files import eos_ids, longest_token_chars
from glimp_ray.engine.session import SessionCache
from glimp_ray.engine.step_signals import probe_ids
from glimp_ray.engine.stops import cut_step_text
from glimp_ray.engine.text import decode_with_ends, refuse_text_longer_than, render_prompt, sync_session
from glimp_ray.engine.vllm_params import (
    SIGNAL_TOP_K,
    environment,
    glimpse_params,
    logprobs_entropy,
    model_defaults,
    position_signals,
    probe_from_logprobs,
    step_params,
    token_signal,
)
from glimp_ray.engine.vllm_run import stream_steps
from glimp_ray.policies import glimpse_routes_large
from glimp_ray.step_run import RunCursor, StepRun, run_steps
from glimp_ray.types import FinishReason, GlimpseSignals, StepRequest, StepResult, StepSignals


class VLLMEngine:
    """Serves :class:`StepRequest` s with vLLM's ``AsyncLLM``."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        think_start: str = "<think>",
        think_end: str = "</think>",
        max_context: int,
        eos_ids: frozenset[int] = frozenset(),
        max_sessions: int = 256,
        max_cached_tokens: int = 1_000_000,
    ):
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self.replica = f"{name}@{os.getpid()}"
        self.think_start = think_start
        self.think_end = think_end
        self.max_context = max_context
        self.max_text_chars = max_context * longest_token_chars(tokenizer)
        self.sessions = SessionCache(max_sessions, max_cached_tokens)
        self.eos_ids = eos_ids
        self.sampling_defaults = model_defaults(llm)  # the model's generation_config.json
        self.generated_tokens = 0
        self.forwarded_tokens = 0  # prompt tokens vLLM did not find in its prefix cache, plus decodes
        self.requests = 0  # vLLM requests made (a run of steps can be one)
        self.busy_s = 0.0
        self._running = 0
        self._busy_since = 0.0

    @classmethod
    def load(
        cls,
        model: str,
        *,
        tokenizer: str | None = None,
        name: str | None = None,
        dtype: str = "auto",
        think_start: str = "<think>",
        think_end: str = "</think>",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_num_seqs: int = 32,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        trust_remote_code: bool = False,
        max_sessions: int = 256,
        max_cached_tokens: int = 1_000_000,
        cpu_threads_bind: str | None = None,
        block_size: int | None = None,
    ) -> VLLMEngine:
        """Start an ``AsyncLLM`` (its engine core runs in a process of its own) with prefix caching.

        ``cpu_threads_bind`` (vLLM's CPU build): the cores its OpenMP threads bind to, e.g. ``"0"`` or
        ``"4-7"`` (``VLLM_CPU_OMP_THREADS_BIND`` of the engine-core process); two engines on one
        machine need disjoint sets, or both bind to the same cores. ``block_size``: tokens per KV
        block, the unit prefix caching reuses (vLLM's default: 16 on GPUs, 128 on CPUs)."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=model,
            tokenizer=tokenizer or model,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            trust_remote_code=trust_remote_code,
            enable_prefix_caching=True,
            # Sharded, the replica itself holds no GPU: vLLM's workers run in its placement group's
            # bundles (Ray Serve LLM sets the same; vLLM's own choice would look for local GPUs).
            **({"distributed_executor_backend": "ray"} if tensor_parallel_size > 1 else {}),
            **({"block_size": block_size} if block_size is not None else {}),
        )
        with environment(VLLM_CPU_OMP_THREADS_BIND=cpu_threads_bind):
            llm = AsyncLLM.from_engine_args(args)
        tok = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        try:
            generation: Any = GenerationConfig.from_pretrained(model)
        except OSError:
            generation = None
        facts = type("ModelFacts", (), {"config": config, "generation_config": generation})()
        return cls(
            llm,
            tok,
            name=name or os.path.basename(os.path.normpath(model)),
            think_start=think_start,
            think_end=think_end,
            max_context=llm.model_config.max_model_len,
            eos_ids=eos_ids(facts, tok),
            max_sessions=max_sessions,
            max_cached_tokens=max_cached_tokens,
        )

    @property
    def queued(self) -> int:
        """Requests in flight on this engine."""
        return self._running

    @property
    def alive(self) -> bool:
        return self.llm is not None and not getattr(self.llm, "errored", False)

    async def release(self, session_id: str) -> None:
        self.sessions.release(session_id)

    def close(self) -> None:
        """Stop vLLM's engine core (its process); the engine serves nothing after this."""
        llm, self.llm = self.llm, None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.shutdown()
            del llm  # collected now, not at interpreter exit when vLLM's own __del__ fails

    def session_prompt(self, request: StepRequest) -> tuple[Any, list[int]]:
        """The request's session, synced to its text, and the prompt tokens to send (refused when
        empty or when it fills the context)."""
        refuse_text_longer_than(request, self.max_text_chars, self.name, self.max_context)
        session = self.sessions.get(request.session_id)
        text, templated = render_prompt(self.tokenizer, request, self.think_start, self.think_end)
        sync_session(self.tokenizer, session, text, templated)
        if request.continuation:  # its own tokens: the text before it stays a reusable prefix
            sync_session(self.tokenizer, session, text + request.continuation, templated)
        prompt = list(session.tokens)
        if not prompt:
            raise InvalidRequestError("empty prompt")
        if len(prompt) >= self.max_context:
            self.sessions.release(request.session_id)
            raise PromptTooLongError(
                f"prompt and transcript are {len(prompt)} tokens; {self.name} has a context of {self.max_context}"
            )
        return session, prompt

    async def step(self, request: StepRequest) -> StepResult:
        session, prompt = self.session_prompt(request)
        self.enter()
        try:
            return await self._generate(request, prompt, session)
        finally:
            self.leave()

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        """A run of easy steps (streaming glimpse), as few vLLM requests as the tokens allow; each
        step is yielded as it completes. The reference rules (a delimiter added after a cut step,
        a step that may overrun the budget) change the text between steps: one request per step."""
        per_step = run.rules.delimiter_after_every_step or not run.rules.clip_to_budget or run.signals
        if per_step or request.glimpse is None:
            async for result in run_steps(self, request, run):
                yield result
            return
        cursor = RunCursor(request, run)
        step = cursor.first()
        while step is not None:
            following: list[StepRequest | None] = []
            async with contextlib.aclosing(stream_steps(self, step, cursor, following)) as steps:
                async for result in steps:  # closed at once if the caller stops reading
                    yield result
            step = following[0] if following else None

    async def abort(self, request_id: str) -> None:
        """Abort a vLLM request, whatever happens meanwhile (a cancel included)."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(self.llm.abort(request_id))

    def count(self, context: int, cached: int, generated: int) -> None:
        self.generated_tokens += generated
        self.forwarded_tokens += context - cached + generated

    async def _generate(self, request: StepRequest, prompt: list[int], session: Any) -> StepResult:
        glimpse, gen = request.glimpse, request.generate
        want_signals = gen is not None and gen.signals
        k = glimpse.top_k if glimpse is not None else (SIGNAL_TOP_K if want_signals else None)
        entropies: list[float] = []
        logprobs: list[float] = []
        probe: float | None = None
        stops: tuple[str, ...] = ()
        if gen is None:
            assert k is not None
            params = glimpse_params(k)
        else:
            stops = tuple(s for s in (gen.stop if request.close_thinking else (*gen.stop, self.think_end)) if s)
            max_tokens = min(gen.max_tokens, self.max_context - len(prompt))
            params = step_params(gen.sampling, self.sampling_defaults, max_tokens, stops, k)
        request_id = f"{request.session_id}-{uuid.uuid4().hex[:12]}"
        self.requests += 1
        start = time.perf_counter()
        first_at: float | None = None
        generated: list[int] = []
        signals: GlimpseSignals | None = None
        cached = 0
        finish: str | None = None
        stop_reason: Any = None
        outputs = self.llm.generate({"prompt_token_ids": prompt}, params, request_id=request_id)
        try:
            async for out in outputs:
                choice = out.outputs[0]
                if out.num_cached_tokens is not None:
                    cached = out.num_cached_tokens
                if first_at is None:
                    first_at = time.perf_counter()
                    if glimpse is not None and choice.logprobs:
                        signals = position_signals(choice.logprobs[0], glimpse.top_k)
                        if glimpse.probe:
                            probe = probe_from_logprobs(choice.logprobs[0], probe_ids(self.tokenizer, glimpse.probe))
                        if gen is not None and glimpse_routes_large(signals, glimpse):
                            await self.llm.abort(request_id)  # the glimpsed token is never kept
                            return self.result(len(prompt), cached, [], "", "routed", signals, start, first_at)
                if want_signals and choice.logprobs:
                    assert k is not None
                    for position, token in enumerate(choice.token_ids):
                        entropy, logprob = token_signal(choice.logprobs[position], token, k)
                        entropies.append(entropy)
                        logprobs.append(logprob)
                generated.extend(choice.token_ids)
                if out.finished:
                    finish, stop_reason = choice.finish_reason, choice.stop_reason
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.llm.abort(request_id))
            raise
        finally:
            with contextlib.suppress(Exception):
                await outputs.aclose()
        self.generated_tokens += len(generated)
        self.forwarded_tokens += len(prompt) - cached + max(len(generated) - 1, 0)
        if gen is None:
            result = self.result(len(prompt), cached, [], "", "glimpse", signals, start, first_at)
            result.probe_prob = probe
            return result
        reason: FinishReason
        if generated and generated[-1] in self.eos_ids:
            reason = "eos"
        elif finish == "stop" and isinstance(stop_reason, str):
            reason = "delimiter"  # refined to think_end from the text
        elif finish == "stop":
            reason = "eos"
        else:
            reason = "length"
        text = ""
        if generated:
            full, ends = decode_with_ends(self.tokenizer, generated)
            session.append(generated, full, ends)
            text, reason = cut_step_text(
                self.tokenizer, full, generated, reason, stops, self.think_end, request.close_thinking
            )
        result = self.result(len(prompt), cached, generated, text, reason, signals, start, first_at)
        result.step_signals = StepSignals.of(entropies, logprobs)
        return result

    def result(
        self,
        context: int,
        cached: int,
        generated: list[int],
        text: str,
        reason: FinishReason,
        signals: GlimpseSignals | None,
        start: float,
        first_at: float | None,
    ) -> StepResult:
        """A step's result: ``context`` tokens sent, ``cached`` of them found in vLLM's prefix cache
        (a run's later steps continue in its request's KV: all of them)."""
        now = time.perf_counter()
        first = first_at if first_at is not None else now
        return StepResult(
            token_ids=list(generated),
            text=text,
            finish_reason=reason,
            entropy=signals.entropy if signals else None,
            routed=reason == "routed",
            top1_prob=signals.top1_prob if signals else None,
            top2_prob=signals.top2_prob if signals else None,
            context_tokens=context,
            reused_tokens=cached,
            prefill_tokens=context - cached,
            generated_tokens=len(generated),
            prefill_s=first - start,  # includes vLLM's queueing: it reports no split here
            decode_s=now - first,
            replica=self.replica,
        )

    def enter(self) -> None:
        if self._running == 0:
            self._busy_since = time.perf_counter()
        self._running += 1

    def leave(self) -> None:
        self._running -= 1
        if self._running == 0:
            self.busy_s += time.perf_counter() - self._busy_since


__all__ = ["VLLMEngine", "logprobs_entropy"]
