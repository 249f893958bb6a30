"""The transformers + torch engine: session KV reuse, the fused glimpse and continuous batching.

Each turn of the step loop (:meth:`HFEngine.run_once`) admits waiting requests (reuse the
session's longest cached prefix, tokenize only unseen text), prefills them (batched, by
:class:`~glimp_ray.engine.runner.ModelRunner`), takes their glimpse, then samples one token for
every decoding request and forwards them all as one decode batch. Requests join and leave the
batch at any token; sampling, stop rules and the glimpse stay per request. The worker thread and
the asyncio front are :class:`~glimp_ray.engine.worker.StepLoopEngine`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from glimp_ray.engine.base import EngineError, InvalidRequestError, PromptTooLongError
from glimp_ray.engine.generation_defaults import generation_config_defaults, resolve_sampling
from glimp_ray.engine.kv_memory import (
    GIB,
    KVBudget,
    KVMemory,
    context_within_budget,
    kv_budget_bytes,
    kv_bytes_per_token,
)
from glimp_ray.engine.model_files import eos_ids, load_model, longest_token_chars, resolve_dtype
from glimp_ray.engine.model_files import max_context as model_max_context
from glimp_ray.engine.runner import ModelRunner
from glimp_ray.engine.sampling import build_processors, make_generator, sample_each
from glimp_ray.engine.scheduler import Scheduler
from glimp_ray.engine.sequence import Sequence
from glimp_ray.engine.session import SessionCache
from glimp_ray.engine.step_signals import probe_ids, probe_prob, record_token_signals
from glimp_ray.engine.stops import StopMatcher, cut_step_text
from glimp_ray.engine.text import decode_with_ends, refuse_text_longer_than, render_prompt, sync_session
from glimp_ray.engine.worker import StepLoopEngine
from glimp_ray.entropy import glimpse_signals
from glimp_ray.policies import glimpse_routes_large
from glimp_ray.types import FinishReason, StepRequest

_FEED_TOKENS = 4  # prefills this short ride the decode forwards (one token a turn)
logger = logging.getLogger(__name__)


class HFEngine(StepLoopEngine):
    """Serves :class:`StepRequest` s with a Hugging Face causal LM.

    Implements :class:`~glimp_ray.engine.base.StepClient`. ``kv_cache_bytes`` is the KV
    budget: the sessions' caches and the decode batch's buffers together (default: a share of the
    CUDA device's free memory once the weights are loaded, at most ``gpu_share`` of the device
    when a replica holds a fraction of it, else 4 GiB; see :mod:`~glimp_ray.engine.kv_memory`).
    Admission waits until what running requests can come to hold fits it; idle sessions are
    evicted (LRU) to make room. ``max_sessions`` and ``max_cached_tokens`` bound the sessions by
    count and tokens too; ``max_running`` bounds how many requests decode at once (the batch
    size), and ``max_batch_tokens`` the decode batch's KV positions, padding included (running
    requests x the longest; admission waits above it). ``max_context`` defaults to the model's,
    lowered to what the budget holds for one request; one given that the budget cannot hold is
    an error. ``batching`` off runs one sequence per forward (the reference path, and the
    fallback for caches that cannot be batched).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        think_start: str = "<think>",
        think_end: str = "</think>",
        max_sessions: int = 256,
        max_cached_tokens: int = 1_000_000,
        max_running: int = 32,
        max_batch_tokens: int = 1 << 20,
        max_context: int | None = None,
        batching: bool = True,
        kv_cache_bytes: int | None = None,
        gpu_share: float | None = None,
    ):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.replica = f"{name}@{os.getpid()}"
        self.think_start = think_start
        self.think_end = think_end
        device = next(model.parameters()).device
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        self.budget = KVBudget(
            kv_budget_bytes(device, kv_cache_bytes, gpu_share, weights), kv_bytes_per_token(model.config, model.dtype)
        )
        self.max_context = context_within_budget(self.budget, max_context, model_max_context(model, tokenizer), name)
        # No token covers more characters than its vocabulary entry has: a text longer than
        # max_context x this cannot fit, and is refused before it is rendered or tokenized.
        self.max_text_chars = self.max_context * longest_token_chars(tokenizer)
        self.sessions = SessionCache(max_sessions, max_cached_tokens, self.budget)
        self.scheduler = Scheduler(max_running, max_batch_tokens, self.sessions, self.budget, self.max_context)
        self.memory = KVMemory(self.budget, self.sessions, self.scheduler, lambda: self.runner.batch)
        self.runner = ModelRunner(
            self.model, batching, max_batch_tokens, self.memory.batch_room, self.memory.free_tokens
        )
        self.device = self.runner.device
        self.eos_ids = eos_ids(model, tokenizer)
        self.sampling_defaults = generation_config_defaults(getattr(model, "generation_config", None))
        self.generated_tokens = 0  # every token sampled, for the service rate
        self._deferred_releases: set[str] = set()  # owned by the worker thread

    @classmethod
    def load(
        cls,
        model: str,
        *,
        tokenizer: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        kv_cache_gib: float | None = None,
        **engine_kwargs: Any,
    ) -> HFEngine:
        """Load a causal LM and its tokenizer from a local directory or hub id; ``kv_cache_gib``
        is the KV budget in GiB (``kv_cache_bytes``), measured once the weights are loaded."""
        lm, tok = load_model(model, tokenizer, device, dtype, trust_remote_code)
        engine_kwargs.setdefault("name", os.path.basename(os.path.normpath(model)))
        if kv_cache_gib is not None:
            engine_kwargs.setdefault("kv_cache_bytes", round(kv_cache_gib * GIB))
        return cls(lm, tok, **engine_kwargs)

    # -- views kept for callers, benchmarks and tests ----------------------------------

    @property
    def batch(self) -> Any:
        """The decode batch the running requests share."""
        return self.runner.batch

    @property
    def batching(self) -> bool:
        return self.runner.batching

    @batching.setter
    def batching(self, value: bool) -> None:
        self.runner.batching = value

    @property
    def forwarded_tokens(self) -> int:
        return self.runner.forwarded_tokens

    # -- the worker thread's hooks -----------------------------------------------------

    def check(self, request: StepRequest) -> None:
        refuse_text_longer_than(request, self.max_text_chars, self.name, self.max_context)

    def accept(self, inbox: list[Sequence], releases: set[str]) -> None:
        # Releases apply to what was queued before them; requests arriving with them come after.
        pending = self._held_sessions()
        for session_id in releases:
            if session_id in pending or not self.sessions.release(session_id) and session_id in self.sessions:
                self._deferred_releases.add(session_id)  # in use: done when its request ends
        if releases:
            # A run of that session ends with its current step: it would bring the session back.
            for seq in [*self.scheduler.waiting, *self.scheduler.running]:
                if seq.run is not None and seq.request.session_id in releases:
                    seq.run.released = True
        for seq in inbox:
            self.scheduler.add(seq)

    def resume(self, seq: Sequence) -> None:
        self.scheduler.waiting.appendleft(seq)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def recover(self) -> None:
        self.runner.reset()
        for seq in list(self.scheduler.running):
            self._fail(seq, EngineError("engine step loop failed"))

    def abandon(self) -> list[Sequence]:
        return [*self.scheduler.waiting, *self.scheduler.running]

    # -- the step loop -----------------------------------------------------------------

    def run_once(self) -> None:
        """Admit and prefill waiting requests, then decode one token for each running one."""
        prepared = []
        # One at a time: each admission sees the context of those admitted before it.
        while seq := self.scheduler.admit_one():
            if not self._guarded(seq, self._prepare):
                continue
            if len(self.scheduler.running) > 1 and not self.scheduler.within_budget():
                # Tokenized, its context does not fit beside the running requests': it waits,
                # first in line (its tokens stay in its session).
                seq.live_session.busy = False
                self.scheduler.requeue(seq)
                break
            prepared.append(seq)
        self.memory.evict()  # room for what the admitted requests reserved
        # Cancelled requests stop here, before any forward (a cancel can come at any time;
        # one that comes later is seen at the next turn).
        for seq in list(self.scheduler.running):
            if seq.aborted:
                self._guarded(seq, lambda s: self._finish(s, "length", cancelled=True))
        prepared = [seq for seq in prepared if seq in self.scheduler.running]
        # A session continuing where it stopped has a few new tokens (its last one, never
        # forwarded, and maybe a marker): they ride the decode forwards, one a turn, instead
        # of a prefill forward of their own.
        for seq in prepared:
            if self.runner.batching and self._prefills_by_decode(seq):
                seq.to_feed = list(seq.prefill)
        prefilling = [seq for seq in prepared if not seq.to_feed]
        self.runner.prefill(prefilling, self._fail)
        for seq in prefilling:
            if seq in self.scheduler.running:
                self._guarded(seq, self._glimpse)
        feeding = [seq for seq in self.scheduler.running if seq.to_feed]
        stepping = self._advance(self.scheduler.running)  # only requests already decoding
        for seq in stepping:
            seq.feed = seq.generated[-1]
        for seq in feeding:
            seq.feed = seq.to_feed.pop(0)
        self._flush_leaves()
        self.runner.decode(stepping + feeding, self._fail)
        for seq in feeding:
            if seq in self.scheduler.running and not seq.to_feed:
                self._guarded(seq, self._glimpse)
        self._flush_leaves()  # a request can end at its glimpse: its session is free at once
        self._release_deferred()
        self.memory.evict()  # finished rows' caches are back in their (now idle) sessions

    def _release_deferred(self) -> None:
        """Deferred releases whose session no request holds any more: a request that waited
        when its release came may since have been abandoned (dropped at admission), and ends
        without a finish to apply it."""
        if not self._deferred_releases:
            return
        for session_id in list(self._deferred_releases - self._held_sessions()):
            if self.sessions.release(session_id) or session_id not in self.sessions:
                self._deferred_releases.discard(session_id)

    def _held_sessions(self) -> set[str]:
        """Sessions a queued or running request still holds (an aborted request that waits is
        dropped at admission, so it holds nothing back)."""
        return {s.request.session_id for s in [*self.scheduler.waiting, *self.scheduler.running] if not s.aborted}

    def _prefills_by_decode(self, seq: Sequence) -> bool:
        session = seq.live_session
        return 0 < len(seq.prefill) <= _FEED_TOKENS and session.kv_len > 0 and session.cache is not None

    def _guarded(self, seq: Sequence, work: Any) -> bool:
        """Run ``work(seq)``; an error fails that request alone. True when it returned true."""
        try:
            return bool(work(seq))
        except Exception as exc:  # one bad request must not stop the loop
            self._fail(seq, exc)
            return False

    def _prepare(self, seq: Sequence) -> bool:
        """Match the session's cache to the request's text; the tokens to forward go in
        ``seq.prefill``."""
        request = seq.request
        start = time.perf_counter()
        session = seq.session = self.sessions.get(request.session_id)
        session.busy = True
        if session.cache is None:
            session.kv_len = 0  # its cache was lost (a failed batch): prefill it afresh
        text, templated = render_prompt(self.tokenizer, request, self.think_start, self.think_end)
        sync_session(self.tokenizer, session, text, templated)
        if request.continuation:  # its own tokens: the text before it stays a reusable prefix
            sync_session(self.tokenizer, session, text + request.continuation, templated)
        if not session.tokens:
            raise InvalidRequestError("empty prompt")
        if len(session.tokens) >= self.max_context:
            raise PromptTooLongError(
                f"prompt and transcript are {len(session.tokens)} tokens; "
                f"{self.name} has a context of {self.max_context}"
            )
        if session.kv_len == len(session.tokens):
            session.crop_kv(len(session.tokens) - 1)  # the last position's logits are needed
        seq.reused_tokens = session.kv_len
        seq.prefill = session.tokens[session.kv_len :]
        seq.prefill_tokens = len(seq.prefill)
        seq.context_tokens = len(session.tokens)
        seq.prefill_start = start
        return True

    def _glimpse(self, seq: Sequence) -> None:
        """After the prefill: the glimpse (and routing), or the set-up for decoding."""
        if seq.logits is None:
            return  # its prefill failed
        request, session = seq.request, seq.live_session
        seq.prefill_s = time.perf_counter() - seq.prefill_start
        seq.decode_start = time.perf_counter()
        if request.glimpse is not None:
            spec = request.glimpse
            seq.glimpse = glimpse_signals(seq.logits, spec.entropy, spec.top_k)
            if spec.probe:
                seq.probe_prob = probe_prob(seq.logits, probe_ids(self.tokenizer, spec.probe))
            if glimpse_routes_large(seq.glimpse, spec):
                self._finish(seq, "routed")  # the glimpsed token is never kept
                return
        if request.generate is None:
            self._finish(seq, "glimpse")
            return
        gen = request.generate
        seq.max_tokens = min(gen.max_tokens, self.max_context - len(session.tokens))
        stops = gen.stop if request.close_thinking else (*gen.stop, self.think_end)
        seq.stops = tuple(s for s in stops if s)
        seq.stop_matcher = StopMatcher(self.tokenizer, seq.stops) if seq.stops else None
        seq.sampling = resolve_sampling(gen.sampling, self.sampling_defaults)
        seq.processors = build_processors(seq.sampling)
        seq.generator = make_generator(seq.sampling, self.device)
        seq.decoding = True

    def _advance(self, seqs: list[Sequence]) -> list[Sequence]:
        """Sample the next token of every decoding request at once; returns those that go on."""
        decoding = [seq for seq in seqs if seq.decoding]
        if not decoding:
            return []
        tokens = sample_each(decoding, self._fail)
        record_token_signals(decoding, tokens)
        going = []
        for seq, token in zip(decoding, tokens, strict=True):
            try:
                if token is not None and self._take(seq, token):
                    going.append(seq)
            except Exception as exc:  # one bad request must not stop the others
                self._fail(seq, exc)
        return going

    def _take(self, seq: Sequence, token: int) -> bool:
        """Append a sampled token and apply the stop rules; True when the request goes on."""
        seq.generated.append(token)
        self.generated_tokens += 1
        if token in self.eos_ids:
            self._finish(seq, "eos")
        elif seq.stop_matcher is not None and seq.stop_matcher(seq.generated):
            self._finish(seq, "delimiter")  # refined to think_end from the text
        elif len(seq.generated) >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            return True
        return False

    def _flush_leaves(self) -> None:
        for seq in self.runner.flush():
            if seq in self.scheduler.running:
                self._fail(seq, EngineError("decode batch failed"))

    def _finish(self, seq: Sequence, reason: FinishReason, cancelled: bool = False) -> None:
        session = seq.live_session
        text = ""
        if seq.generated:
            full, ends = decode_with_ends(self.tokenizer, seq.generated)
            session.append(seq.generated, full, ends)
            text, reason = cut_step_text(
                self.tokenizer, full, seq.generated, reason, seq.stops, self.think_end, seq.request.close_thinking
            )
        result = seq.result(text, reason, self.replica)
        self._retire(seq)
        if cancelled:
            # Its caller went away: the session would only wait for LRU eviction.
            self.sessions.release(session.session_id)
        self._done(seq, asyncio.CancelledError() if cancelled else result)

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        session = seq.session
        if session is not None:
            # Its cache may hold tokens the session's text does not: start it afresh.
            session.busy = False
            self.sessions.release(session.session_id)
            self._deferred_releases.discard(session.session_id)
        for other in self.runner.drop(seq):
            if other in self.scheduler.running:
                self._fail(other, EngineError("decode batch failed"))
        if seq in self.scheduler.running:
            self.scheduler.finish(seq)
        with contextlib.suppress(Exception):
            seq.on_done(exc)

    def _retire(self, seq: Sequence) -> None:
        session_id = seq.live_session.session_id
        seq.live_session.busy = False
        self.scheduler.finish(seq)
        self.runner.retire(seq)
        if session_id in self._deferred_releases:
            self._deferred_releases.discard(session_id)
            self.sessions.release(session_id)
        self.sessions.evict(self.memory.reserved_bytes())


__all__ = ["HFEngine", "resolve_dtype"]
