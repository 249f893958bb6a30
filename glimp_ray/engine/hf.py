"""The transformers + torch engine: session KV reuse, fused glimpse, a request queue and
a step loop on a worker thread.

Each call of :meth:`HFEngine.run_once` admits waiting requests (prefill: reuse the
session's longest cached prefix, forward only the unseen tokens, take the glimpse), then
advances every running request by one token. Continuous batching: the prefills admitted
together run as one forward, and every decoding request is a row of one
:class:`~glimp_ray.engine.batch.DecodeBatch`, so a token for all of them is one forward.
Requests join and leave the batch at any token; sampling, stop rules and the glimpse stay
per request.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import os
import threading
import time
import weakref
from typing import Any

import torch
from transformers import DynamicCache, StopStringCriteria

from glimp_ray.engine.base import EngineError, InvalidRequestError, PromptTooLongError
from glimp_ray.engine.batch import DecodeBatch, batchable, prefill
from glimp_ray.engine.sampling import build_processors, make_generator, sample_tokens
from glimp_ray.engine.scheduler import DoneCallback, Scheduler, Sequence
from glimp_ray.engine.session import Session, SessionCache
from glimp_ray.engine.text import decode_with_ends, render_prompt
from glimp_ray.entropy import glimpse_entropy
from glimp_ray.types import FinishReason, StepRequest, StepResult

logger = logging.getLogger(__name__)
_MAX_STOP_CRITERIA = 64
_FEED_TOKENS = 4  # prefills this short ride the decode forwards (one token a turn)

# Worker threads are stopped before interpreter shutdown tears down torch underneath them.
_LIVE_ENGINES: weakref.WeakSet[HFEngine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.close()


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class HFEngine:
    """Serves :class:`StepRequest` s with a Hugging Face causal LM.

    Implements :class:`~glimp_ray.engine.base.StepClient`. ``max_sessions`` and
    ``max_cached_tokens`` bound the KV memory (LRU eviction); ``max_running`` bounds how
    many requests decode at once (the batch size), and ``max_batch_tokens`` the decode batch's
    KV positions, padding included (running requests x the longest; admission waits above it). ``batching``
    off runs one sequence per forward (the reference path, and the fallback for caches that
    cannot be batched).
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
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.replica = f"{name}@{os.getpid()}"
        self.think_start = think_start
        self.think_end = think_end
        self.device = next(model.parameters()).device
        self.max_context = max_context or _max_context(model, tokenizer)
        # No token covers more characters than its vocabulary entry has: a text longer than
        # max_context x this cannot fit, and is refused before it is rendered or tokenized.
        self.max_text_chars = self.max_context * _longest_token_chars(tokenizer)
        self.sessions = SessionCache(max_sessions, max_cached_tokens)
        self.scheduler = Scheduler(max_running)
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.max_batch_tokens = max_batch_tokens
        self.batching = batching and batchable(model)
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.batch = DecodeBatch(model, self._cache_kwarg)
        self._leaving: list[Sequence] = []  # finished rows, taken out of the batch together
        self.eos_ids = _eos_ids(model, tokenizer)
        self.forwarded_tokens = 0  # every token ever run through the model, for accounting
        self.generated_tokens = 0  # every token sampled, for the service rate
        self.busy_s = 0.0  # seconds the step loop had work, for the service rate
        self._stop_criteria: dict[tuple[str, ...], tuple[StopStringCriteria, list[bool]]] = {}
        self._cv = threading.Condition()
        self._inbox: list[Sequence] = []
        self._outstanding: set[Sequence] = set()  # submitted, not yet answered (``queued``)
        self._releases: set[str] = set()
        self._deferred_releases: set[str] = set()  # owned by the worker thread
        self._closed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def load(
        cls,
        model: str,
        *,
        tokenizer: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        **engine_kwargs: Any,
    ) -> HFEngine:
        """Load a causal LM and its tokenizer from a local directory or hub id."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if (os.path.isabs(model) or model.startswith(".")) and not os.path.isdir(model):
            raise EngineError(f"cannot load model {model!r}: no such directory")
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
            lm = AutoModelForCausalLM.from_pretrained(
                model, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
            )
        except OSError as exc:
            raise EngineError(f"cannot load model {model!r}: {exc}") from exc
        engine_kwargs.setdefault("name", os.path.basename(os.path.normpath(model)))
        return cls(lm.to(device), tok, **engine_kwargs)  # type: ignore[arg-type]

    # -- the async front: the StepClient interface ------------------------------------

    async def step(self, request: StepRequest) -> StepResult:
        chars = request_chars(request)
        if chars > self.max_text_chars:
            raise PromptTooLongError(
                f"prompt and transcript are {chars} characters; {self.name} has a context of "
                f"{self.max_context} tokens (at most {self.max_text_chars} characters)"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StepResult] = loop.create_future()

        def done(outcome: StepResult | BaseException) -> None:
            with self._cv:
                self._outstanding.discard(seq)
            # The caller's loop may be gone (e.g. asyncio.run timed out): nobody to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, outcome)

        seq = Sequence(request, done)
        self._submit(seq)
        try:
            return await future
        except asyncio.CancelledError:
            seq.aborted = True  # the step loop stops it at the next token
            with self._cv:
                self._outstanding.discard(seq)
            raise

    async def release(self, session_id: str) -> None:
        with self._cv:
            self._releases.add(session_id)
            self._cv.notify()

    @property
    def queued(self) -> int:
        """Requests submitted and not yet answered (waiting or running)."""
        with self._cv:
            return len(self._outstanding)

    def close(self) -> None:
        """Stop the worker thread; requests still queued are failed."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _submit(self, seq: Sequence) -> None:
        with self._cv:
            if self._closed:
                raise EngineError("engine is closed")
            self._inbox.append(seq)
            self._outstanding.add(seq)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=f"engine-{self.name}", daemon=True)
                self._thread.start()
                _LIVE_ENGINES.add(self)
            self._cv.notify()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._inbox or self._releases or self.scheduler.has_work):
                    self._cv.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
                releases, self._releases = self._releases, set()
            # Releases apply to what was queued before them; requests arriving with them come after.
            pending = {s.request.session_id for s in [*self.scheduler.waiting, *self.scheduler.running]}
            for session_id in releases:
                if session_id in pending or not self.sessions.release(session_id) and session_id in self.sessions:
                    self._deferred_releases.add(session_id)  # in use: done when its request ends
            for seq in inbox:
                self.scheduler.add(seq)
            start = time.perf_counter()
            try:
                self.run_once()
            except Exception:  # a bug must fail requests, not silently stop the worker
                logger.exception("engine step loop failed; failing its running requests")
                self._reset_batch()
                for seq in list(self.scheduler.running):
                    self._fail(seq, EngineError("engine step loop failed"))
            self.busy_s += time.perf_counter() - start
        for seq in [*self._inbox, *self.scheduler.waiting, *self.scheduler.running]:
            seq.on_done(EngineError("engine closed"))

    # -- the step loop ---------------------------------------------------------------

    def run_once(self) -> None:
        """Admit and prefill waiting requests, then decode one token for each running one."""
        prepared = []
        # One at a time: each admission sees the context of those admitted before it.
        while admitted := self.scheduler.admit(self._is_busy, self._has_room, limit=1):
            if self._guarded(admitted[0], self._prepare):
                prepared.append(admitted[0])
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
            if self.batching and self._prefills_by_decode(seq):
                seq.state["to_feed"] = list(seq.state["prefill"])
        prefilling = [seq for seq in prepared if not seq.state.get("to_feed")]
        self._forward_prefills(prefilling)
        for seq in prefilling:
            if seq in self.scheduler.running:
                self._guarded(seq, self._glimpse)
        feeding = [seq for seq in self.scheduler.running if seq.state.get("to_feed")]
        stepping = self._advance(self.scheduler.running)  # only requests already decoding
        for seq in stepping:
            seq.state["feed"] = seq.generated[-1]
        for seq in feeding:
            seq.state["feed"] = seq.state["to_feed"].pop(0)
        self._flush_leaves()
        self._forward_decodes(stepping + feeding)
        for seq in feeding:
            if seq in self.scheduler.running and not seq.state["to_feed"]:
                self._guarded(seq, self._glimpse)
        self._flush_leaves()  # a request can end at its glimpse: its session is free at once

    def _is_busy(self, session_id: str) -> bool:
        session = self.sessions.peek(session_id)
        return session is not None and session.busy

    def _prefills_by_decode(self, seq: Sequence) -> bool:
        session = seq.session
        return 0 < len(seq.state["prefill"]) <= _FEED_TOKENS and session.kv_len > 0 and session.cache is not None

    def _has_room(self, candidate: Sequence) -> bool:
        """Whether the running requests and ``candidate``, padded to the longest, stay within
        ``max_batch_tokens`` KV positions (what the decode batch will hold)."""
        running = self.scheduler.running
        longest = max((seq.context_tokens + len(seq.generated) for seq in running), default=0)
        longest = max(longest, self._context_estimate(candidate))
        return (len(running) + 1) * longest <= self.max_batch_tokens

    def _context_estimate(self, seq: Sequence) -> int:
        """An upper bound on the tokens a request brings, before it is tokenized: at most one
        per character of its text, and at most its session's tokens plus the transcript."""
        request = seq.request
        estimate = request_chars(request)
        session = self.sessions.peek(request.session_id)
        if session is not None and session.tokens:
            estimate = min(estimate, len(session.tokens) + len(request.transcript))
        return estimate

    def _guarded(self, seq: Sequence, work: Any) -> bool:
        """Run ``work(seq)``; an error fails that request alone. True when it returned true."""
        try:
            return bool(work(seq))
        except Exception as exc:  # one bad request must not stop the loop
            self._fail(seq, exc)
            return False

    @torch.inference_mode()
    def _forward(self, session: Session, token_ids: list[int]) -> torch.Tensor:
        """One sequence, one forward (the unbatched path)."""
        if session.cache is None:
            session.cache = DynamicCache(config=self.model.config)
        inputs = torch.tensor([token_ids], device=self.device)
        out = self.model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{self._cache_kwarg: session.cache})
        session.kv_len += len(token_ids)
        self.forwarded_tokens += len(token_ids)
        return out.logits[0, -1]

    def _prepare(self, seq: Sequence) -> bool:
        """Match the session's cache to the request's text; the tokens to forward go in
        ``seq.state["prefill"]``."""
        request = seq.request
        start = time.perf_counter()
        session = seq.session = self.sessions.get(request.session_id)
        session.busy = True
        if session.cache is None:
            session.kv_len = 0  # its cache was lost (a failed batch): prefill it afresh
        text, templated = render_prompt(self.tokenizer, request, self.think_start, self.think_end)
        kept = session.match(text)
        new_text = text[len(session.text) :]
        if new_text:
            # Only text this session has not seen is tokenized.
            ids = self.tokenizer.encode(new_text, add_special_tokens=kept == 0 and not templated)
            session.append(ids, new_text, [len(new_text)] * len(ids))
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
        seq.state["prefill"] = session.tokens[session.kv_len :]
        seq.prefill_tokens = len(seq.state["prefill"])
        seq.context_tokens = len(session.tokens)
        seq.state["prefill_start"] = start
        return True

    def _forward_prefills(self, seqs: list[Sequence]) -> None:
        """Prefill in forwards of several requests, each within ``max_batch_tokens`` padded
        positions; a forward that fails is retried one request at a time."""
        if not self.batching:
            for seq in seqs:
                self._prefill_alone(seq)
            return
        for group in self._prefill_groups(seqs):
            if len(group) == 1:
                self._prefill_alone(group[0])
                continue
            try:
                entries = [(seq.session.cache, seq.state["prefill"]) for seq in group]
                caches, logits = prefill(self.model, self._cache_kwarg, entries)
            except Exception:
                logger.exception("batched prefill of %d requests failed; prefilling them one by one", len(group))
                for seq in group:
                    self._prefill_alone(seq)
                continue
            for seq, cache, row in zip(group, caches, logits, strict=True):
                seq.session.cache = cache
                seq.session.kv_len += len(seq.state["prefill"])
                self.forwarded_tokens += len(seq.state["prefill"])
                seq.logits = row

    def _prefill_groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Requests of similar length together, each group padded within ``max_batch_tokens``."""
        groups: list[list[Sequence]] = []
        widest = longest = 0
        for seq in sorted(seqs, key=lambda s: (s.session.kv_len, len(s.state["prefill"]))):
            cached, new = seq.session.kv_len, len(seq.state["prefill"])
            size = (len(groups[-1]) + 1) * (max(widest, cached) + max(longest, new)) if groups else 0
            if not groups or size > self.max_batch_tokens:
                groups.append([])
                widest = longest = 0
            groups[-1].append(seq)
            widest, longest = max(widest, cached), max(longest, new)
        return groups

    def _prefill_alone(self, seq: Sequence) -> None:
        self._guarded(seq, lambda s: setattr(s, "logits", self._forward(s.session, s.state["prefill"])))

    def _glimpse(self, seq: Sequence) -> None:
        """After the prefill: the glimpse (and routing), or the set-up for decoding."""
        if seq.logits is None:
            return  # its prefill failed
        request, session = seq.request, seq.session
        seq.prefill_s = time.perf_counter() - seq.state["prefill_start"]
        seq.decode_start = time.perf_counter()
        if request.glimpse is not None:
            spec = request.glimpse
            seq.entropy = glimpse_entropy(seq.logits, spec.entropy, spec.top_k)
            if spec.threshold is not None and seq.entropy > spec.threshold:
                self._finish(seq, "routed")  # the glimpsed token is never kept
                return
        if request.generate is None:
            self._finish(seq, "glimpse")
            return
        gen = request.generate
        seq.max_tokens = min(gen.max_tokens, self.max_context - len(session.tokens))
        stops = gen.stop if request.close_thinking else (*gen.stop, self.think_end)
        seq.state["stops"] = tuple(s for s in stops if s)
        seq.state["sampling"] = gen.sampling
        seq.state["processors"] = build_processors(gen.sampling)
        seq.state["generator"] = make_generator(gen.sampling, self.device)
        seq.state["decoding"] = True

    def _advance(self, seqs: list[Sequence]) -> list[Sequence]:
        """Sample the next token of every decoding request at once; returns those that go on."""
        decoding = [seq for seq in seqs if seq.state.get("decoding")]
        if not decoding:
            return []
        rows = [(seq.state["sampling"], seq.state["processors"], seq.state["generator"]) for seq in decoding]
        try:
            tokens: list[int | None] = list(sample_tokens(torch.stack([seq.logits for seq in decoding]), rows))
        except Exception:  # find the request at fault: each samples alone
            tokens = [self._guarded_sample(seq, row) for seq, row in zip(decoding, rows, strict=True)]
        going = []
        for seq, token in zip(decoding, tokens, strict=True):
            try:
                if token is not None and self._take(seq, token):
                    going.append(seq)
            except Exception as exc:  # one bad request must not stop the others
                self._fail(seq, exc)
        return going

    def _guarded_sample(self, seq: Sequence, row: Any) -> int | None:
        try:
            return sample_tokens(seq.logits.unsqueeze(0), [row])[0]
        except Exception as exc:
            self._fail(seq, exc)
            return None

    def _take(self, seq: Sequence, token: int) -> bool:
        """Append a sampled token and apply the stop rules; True when the request goes on."""
        seq.generated.append(token)
        self.generated_tokens += 1
        if token in self.eos_ids:
            self._finish(seq, "eos")
        elif self._stops_at(seq, token):
            self._finish(seq, "delimiter")  # refined to think_end from the text
        elif len(seq.generated) >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            return True
        return False

    def _stops_at(self, seq: Sequence, token: int) -> bool:
        stops = seq.state["stops"]
        if not stops:
            return False
        criteria, can_end = self._criteria(stops)
        # Only a token that can end a stop string can complete one: most tokens skip the check.
        if not can_end[min(token, len(can_end) - 1)]:
            return False
        return bool(criteria(torch.tensor([seq.generated]), None)[0])

    def _forward_decodes(self, seqs: list[Sequence]) -> None:
        """Forward each request's newest token: one batched forward, or one each."""
        if not seqs:
            return
        if not self.batching:
            for seq in seqs:
                self._guarded(seq, lambda s: setattr(s, "logits", self._forward(s.session, [s.state["feed"]])))
            return
        try:
            joining = [seq for seq in seqs if seq not in self.batch]
            self.batch.join([(seq, seq.session.cache) for seq in joining])
            for seq in joining:
                seq.session.cache = None  # the batch holds it until the request leaves
            if len(self.batch) != len(seqs):
                raise EngineError(f"decode batch has {len(self.batch)} rows for {len(seqs)} decoding requests")
            rows: list[Sequence] = list(self.batch.rows)  # type: ignore[arg-type]
            logits = self.batch.step([seq.state["feed"] for seq in rows])
        except Exception as exc:
            logger.exception("batched decode failed; failing its requests")
            self._reset_batch()
            for seq in seqs:
                self._fail(seq, exc)
            return
        self.forwarded_tokens += len(rows)
        for seq, row in zip(rows, logits, strict=True):
            seq.session.kv_len += 1
            seq.logits = row

    def _flush_leaves(self) -> None:
        """Finished rows leave the decode batch together; their sessions get their caches back."""
        leaving = [seq for seq in self._leaving if seq in self.batch]
        self._leaving = []
        if not leaving:
            return
        try:
            caches = self.batch.leave(leaving)
        except Exception:
            # The batch is in an unknown state: its rows' caches are gone (their sessions
            # prefill afresh) and the requests still in it fail.
            logger.exception("leaving the decode batch failed")
            for seq in self._reset_batch():
                if seq in self.scheduler.running:
                    self._fail(seq, EngineError("decode batch failed"))
            return
        for row, cache in caches.items():
            row.session.cache = cache  # type: ignore[attr-defined]

    def _reset_batch(self) -> list[Sequence]:
        """Drop the decode batch; returns the requests that had a row in it."""
        rows: list[Sequence] = list(self.batch.rows)  # type: ignore[arg-type]
        self.batch = DecodeBatch(self.model, self._cache_kwarg)
        self._leaving = []
        for seq in rows:
            seq.session.cache = None  # the next request of the session prefills from scratch
        return rows

    def _criteria(self, stops: tuple[str, ...]) -> tuple[StopStringCriteria, list[bool]]:
        """transformers' stop-string criteria for these stops, and which token ids can end a
        match (read from the criteria's own table: a token overlapping a stop string's end)."""
        if stops not in self._stop_criteria:
            if len(self._stop_criteria) >= _MAX_STOP_CRITERIA:
                self._stop_criteria.pop(next(iter(self._stop_criteria)))
            criteria = StopStringCriteria(self.tokenizer, list(stops))
            ends = criteria.embedding_vec[:, criteria.max_valid_positions * criteria.num_stop_strings : -1]
            self._stop_criteria[stops] = (criteria, (ends > 0).any(dim=1).tolist())
        return self._stop_criteria[stops]

    def _finish(self, seq: Sequence, reason: FinishReason, cancelled: bool = False) -> None:
        session: Session = seq.session
        text = ""
        if seq.generated:
            full, ends = decode_with_ends(self.tokenizer, seq.generated)
            session.append(seq.generated, full, ends)
            text, reason = self._cut(
                full, seq.generated, reason, seq.state.get("stops", ()), seq.request.close_thinking
            )
        now = time.perf_counter()
        result = StepResult(
            token_ids=list(seq.generated),
            text=text,
            finish_reason=reason,
            entropy=seq.entropy,
            routed=reason == "routed",
            context_tokens=seq.context_tokens,
            reused_tokens=seq.reused_tokens,
            prefill_tokens=seq.prefill_tokens,
            generated_tokens=len(seq.generated),
            queue_s=seq.admitted - seq.submitted,
            prefill_s=seq.prefill_s,
            decode_s=now - seq.decode_start,
            replica=self.replica,
        )
        self._retire(seq)
        if cancelled:
            # Its caller went away: the session would only wait for LRU eviction.
            self.sessions.release(session.session_id)
        seq.on_done(asyncio.CancelledError() if cancelled else result)

    def _cut(
        self,
        full: str,
        generated: list[int],
        reason: FinishReason,
        stops: tuple[str, ...],
        answering: bool,
    ) -> tuple[str, FinishReason]:
        """The step text the loop sees: up to and including the delimiter, or up to the
        think-end marker (excluded), or without the EOS token."""
        if reason == "eos":
            # Decoded without the EOS token: its text must not leak into the transcript.
            kwargs = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
            return self.tokenizer.decode(generated[:-1], **kwargs).rstrip(_REPLACEMENT), reason
        if reason != "delimiter":
            # A length cut can fall inside a multi-byte character: leave its bytes out of
            # the text (the next call crops the tokens that no longer match).
            return full.rstrip(_REPLACEMENT), reason
        hits = [(full.find(s), s) for s in stops if s in full]
        if not hits:
            return full, reason
        index, stop = min(hits)
        if stop == self.think_end and not answering:
            return full[:index], "think_end"
        return full[: index + len(stop)], "delimiter"

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        session = seq.session
        if session is not None:
            # Its cache may hold tokens the session's text does not: start it afresh.
            session.busy = False
            self.sessions.release(session.session_id)
            self._deferred_releases.discard(session.session_id)
        if seq in self.batch:
            try:
                self.batch.leave([seq])  # its cache is dropped with the session
            except Exception:
                logger.exception("leaving the decode batch failed")
                for other in self._reset_batch():
                    if other is not seq and other in self.scheduler.running:
                        self._fail(other, EngineError("decode batch failed"))
        if seq in self.scheduler.running:
            self.scheduler.finish(seq)
        with contextlib.suppress(Exception):
            seq.on_done(exc)

    def _retire(self, seq: Sequence) -> None:
        session_id = seq.session.session_id
        seq.session.busy = False
        self.scheduler.finish(seq)
        if seq in self.batch:
            self._leaving.append(seq)
        if session_id in self._deferred_releases:
            self._deferred_releases.discard(session_id)
            self.sessions.release(session_id)
        self.sessions.evict()


_REPLACEMENT = "\ufffd"  # what a decoder emits for an incomplete UTF-8 character


def _resolve(future: asyncio.Future[StepResult], outcome: StepResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def request_chars(request: StepRequest) -> int:
    """Characters of a request's text (prompt or message contents, and transcript)."""
    chars = len(request.prompt or "") + sum(len(str(m.get("content", ""))) for m in request.messages or ())
    return chars + len(request.transcript)


def _longest_token_chars(tokenizer: Any) -> int:
    """The longest vocabulary entry in characters: an upper bound on the text one token decodes
    to (byte-level entries spell each byte as one character)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        return 1 << 10
    return max((len(token) for token in vocab), default=1) or 1


def _max_context(model: Any, tokenizer: Any) -> int:
    value = getattr(model.config, "max_position_embeddings", None)
    if isinstance(value, int) and value > 0:
        return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1 << 30 else 1 << 20


__all__ = ["DoneCallback", "HFEngine", "resolve_dtype"]
