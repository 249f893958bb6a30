"""The vLLM engine: step requests on vLLM's ``AsyncLLM`` (paged KV, prefix caching, continuous
batching), behind the same :class:`~glimp_ray.engine.base.StepClient` contract as HFEngine.

- **Glimpse**: the first token's top-k logprobs (vLLM's raw logprobs, before temperature),
  renormalised: the paper's reference entropy. Full-vocabulary entropy is not available here.
- **Fused mode**: the step streams; right after its first token, if the entropy exceeds τ the
  request is aborted and ``routed`` returned (nothing else was generated). **Paper mode** sends a
  separate 1-token request, as the reference code does.
- **Runs of easy steps** (streaming glimpse, :meth:`VLLMEngine.run_steps`): one vLLM request
  writes step after step. At each delimiter the next token's top-k logprobs are its glimpse; a
  hard one aborts the request (that token dropped) and the step is returned ``routed``. A request
  stops where a new one would not see the same tokens (a token running past the delimiter, which
  a new request would re-tokenize) and the run goes on with a new request. Under greedy decoding
  the steps are those of one call per step; with sampling, a request's steps draw from its one
  seeded stream (reproducible, but not the per-step seeds).
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
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from glimp_ray.engine.base import InvalidRequestError, PromptTooLongError
from glimp_ray.engine.model_files import eos_ids, longest_token_chars
from glimp_ray.engine.session import SessionCache
from glimp_ray.engine.stops import StopMatcher, cut_step_text
from glimp_ray.engine.text import decode_with_ends, refuse_text_longer_than, render_prompt, sync_session
from glimp_ray.entropy import topk_entropy
from glimp_ray.policies import routes_large
from glimp_ray.step_run import RunCursor, StepRun, run_steps
from glimp_ray.types import FinishReason, StepRequest, StepResult


def logprobs_entropy(logprobs: dict[int, Any], k: int) -> float:
    """Entropy of the ``k`` most likely first tokens, renormalised, from vLLM's logprobs of one
    position (the sampled token may be an extra entry beyond the top k)."""
    import torch

    values = torch.tensor([float(getattr(lp, "logprob", lp)) for lp in logprobs.values()], dtype=torch.float64)
    return float(topk_entropy(values, k))


@contextlib.contextmanager
def _environment(**values: str | None) -> Any:
    """Set environment variables (those not None) while vLLM starts its engine-core process."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


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
        with _environment(VLLM_CPU_OMP_THREADS_BIND=cpu_threads_bind):
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

    def _prompt(self, request: StepRequest) -> tuple[Any, list[int]]:
        """The request's session, synced to its text, and the prompt tokens to send (refused when
        empty or when it fills the context)."""
        refuse_text_longer_than(request, self.max_text_chars, self.name, self.max_context)
        session = self.sessions.get(request.session_id)
        text, templated = render_prompt(self.tokenizer, request, self.think_start, self.think_end)
        sync_session(self.tokenizer, session, text, templated)
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
        session, prompt = self._prompt(request)
        self._enter()
        try:
            return await self._generate(request, prompt, session)
        finally:
            self._leave()

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        """A run of easy steps (streaming glimpse), as few vLLM requests as the tokens allow; each
        step is yielded as it completes. The reference rules (a delimiter added after a cut step,
        a step that may overrun the budget) change the text between steps: one request per step."""
        if run.rules.delimiter_after_every_step or not run.rules.clip_to_budget or request.glimpse is None:
            async for result in run_steps(self, request, run):
                yield result
            return
        cursor = RunCursor(request, run)
        step = cursor.first()
        while step is not None:
            following: list[StepRequest | None] = []
            async with contextlib.aclosing(self._stream_steps(step, cursor, following)) as steps:
                async for result in steps:  # closed at once if the caller stops reading
                    yield result
            step = following[0] if following else None

    async def _stream_steps(
        self, step: StepRequest, cursor: RunCursor, following: list[StepRequest | None]
    ) -> AsyncGenerator[StepResult, None]:
        """Steps of one vLLM request from ``step`` on; when the request stops before the run ends,
        the next step's request is left in ``following``."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        glimpse, gen = step.glimpse, step.generate
        assert glimpse is not None and gen is not None and glimpse.threshold is not None
        session, prompt = self._prompt(step)
        run = cursor.run
        think_stops = () if step.close_thinking else (self.think_end,)
        stops = tuple(s for s in (run.delimiter, *think_stops) if s)
        matcher = StopMatcher(self.tokenizer, stops)
        sampling = gen.sampling
        params = SamplingParams(
            max_tokens=min(run.thinking_budget - cursor.used, self.max_context - len(prompt)),
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            seed=sampling.seed,
            stop=list(think_stops) or None,
            include_stop_str_in_output=True,
            logprobs=glimpse.top_k,
            flat_logprobs=True,  # a few flat lists per request, not 21 objects per token
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
        )
        params.output_kind = RequestOutputKind.DELTA
        request_id = f"{step.session_id}-run-{uuid.uuid4().hex[:12]}"
        self.requests += 1
        self._enter()
        context, cached, first_call = len(prompt), 0, True
        tokens: list[int] = []  # the current step's
        entropy: float | None = None
        start = first_at = time.perf_counter()
        outputs = self.llm.generate({"prompt_token_ids": prompt}, params, request_id=request_id)
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
                        entropy = logprobs_entropy(logprobs[j], glimpse.top_k) if logprobs[j] else None
                        if entropy is not None and routes_large(entropy, glimpse.threshold):
                            await self._abort(request_id)  # the glimpsed token is never kept
                            finished = True
                            self._count(context, cached, 0)
                            result = self._result(context, cached, [], "", "routed", entropy, start, first_at)
                            cursor.advance(result)
                            yield result
                            return
                    tokens.append(token)
                    reason: FinishReason | None = None
                    if token in self.eos_ids:
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
                    full, ends = decode_with_ends(self.tokenizer, tokens)
                    session.append(tokens, full, ends)
                    step_text, reason = cut_step_text(
                        self.tokenizer, full, tokens, reason, stops, self.think_end, step.close_thinking
                    )
                    self._count(context, cached, len(tokens))
                    result = self._result(context, cached, tokens, step_text, reason, entropy, start, first_at)
                    nxt = cursor.advance(result)
                    more = j < len(choice.token_ids) - 1 or not last_delta
                    if nxt is None or step_text != full or not more:
                        # The request ends here (stopped before the step is handed on, so vLLM
                        # writes nothing more); a new one goes on where it would see other tokens.
                        await self._abort(request_id)
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
            self._leave()  # first: nothing below may keep the engine counted busy
            if not finished:  # closed or cancelled midway
                await self._abort(request_id)
            with contextlib.suppress(BaseException):
                await outputs.aclose()

    async def _abort(self, request_id: str) -> None:
        """Abort a vLLM request, whatever happens meanwhile (a cancel included)."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(self.llm.abort(request_id))

    def _count(self, context: int, cached: int, generated: int) -> None:
        self.generated_tokens += generated
        self.forwarded_tokens += context - cached + generated

    async def _generate(self, request: StepRequest, prompt: list[int], session: Any) -> StepResult:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        glimpse, gen = request.glimpse, request.generate
        k = glimpse.top_k if glimpse is not None else None
        if gen is None:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False, flat_logprobs=True)
            stops: tuple[str, ...] = ()
        else:
            stops = tuple(s for s in (gen.stop if request.close_thinking else (*gen.stop, self.think_end)) if s)
            sampling = gen.sampling
            params = SamplingParams(
                max_tokens=min(gen.max_tokens, self.max_context - len(prompt)),
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                seed=sampling.seed,
                stop=list(stops) or None,
                include_stop_str_in_output=True,
                logprobs=k,
                flat_logprobs=True,
                skip_special_tokens=False,
                spaces_between_special_tokens=False,
            )
        params.output_kind = RequestOutputKind.DELTA
        request_id = f"{request.session_id}-{uuid.uuid4().hex[:12]}"
        self.requests += 1
        start = time.perf_counter()
        first_at: float | None = None
        generated: list[int] = []
        entropy: float | None = None
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
                        entropy = logprobs_entropy(choice.logprobs[0], glimpse.top_k)
                        if (
                            gen is not None
                            and glimpse.threshold is not None
                            and routes_large(entropy, glimpse.threshold)
                        ):
                            await self.llm.abort(request_id)  # the glimpsed token is never kept
                            return self._result(len(prompt), cached, [], "", "routed", entropy, start, first_at)
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
            return self._result(len(prompt), cached, [], "", "glimpse", entropy, start, first_at)
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
        return self._result(len(prompt), cached, generated, text, reason, entropy, start, first_at)

    def _result(
        self,
        context: int,
        cached: int,
        generated: list[int],
        text: str,
        reason: FinishReason,
        entropy: float | None,
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
            entropy=entropy,
            routed=reason == "routed",
            context_tokens=context,
            reused_tokens=cached,
            prefill_tokens=context - cached,
            generated_tokens=len(generated),
            prefill_s=first - start,  # includes vLLM's queueing: it reports no split here
            decode_s=now - first,
            replica=self.replica,
        )

    def _enter(self) -> None:
        if self._running == 0:
            self._busy_since = time.perf_counter()
        self._running += 1

    def _leave(self) -> None:
        self._running -= 1
        if self._running == 0:
            self.busy_s += time.perf_counter() - self._busy_since


__all__ = ["VLLMEngine", "logprobs_entropy"]
