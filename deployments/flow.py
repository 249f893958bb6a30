"""Admission on a router replica: a priority that sheds batch traffic first, and the key's token
buckets (``rate_limits.py``), both answered with a 429 in OpenAI's shape and ``Retry-After``.

It runs inside the API-key dependency of every route (``auth.require_api_key``) on the two
generation routes, before the handler: it counts the request in flight on this replica until its
response is sent (a stream until its last chunk), reads the body within ``max_request_bytes``
(Starlette keeps it for the handler) and takes what the request may generate from its key's
token bucket. A request the handler then refuses with a 4xx, before any model call, gets its
tokens back, and one whose handler leaves ``request.state.completion_tokens`` gets back what it
did not generate (the router does not yet). On a Serve replica the settings come from the
router's own config, read once from the replica context; elsewhere ``configure`` sets them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

from fastapi import Request, Response

from deployments.config import AppConfig, ServingConfig
from deployments.errors import APIError
from deployments.limits import read_body
from deployments.rate_limits import Clock, RateLimiter, Refusal, retry_headers

logger = logging.getLogger("ray.serve")

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
PRIORITY_HEADER = "x-glimp-priority"
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


class TooManyRequests(APIError):
    """A 429 with its ``Retry-After`` and rate-limit headers."""

    def __init__(self, message: str, type_: str, code: str, headers: dict[str, str]):
        super().__init__(429, message, type_, code=code)
        self.headers = headers


def priority_of(header: str | None, body: Any) -> Priority:
    """``glimp.priority`` in the body or the ``X-Glimp-Priority`` header; either one saying batch
    makes it batch (a client cannot raise what its gateway lowered). Default: interactive."""
    chosen: list[tuple[str, Any]] = []
    if header is not None:
        chosen.append(("X-Glimp-Priority", header.strip().lower()))
    glimp = body.get("glimp") if isinstance(body, dict) else None
    if isinstance(glimp, dict) and "priority" in glimp:
        chosen.append(("glimp.priority", glimp["priority"]))
    for param, value in chosen:
        if value not in PRIORITIES:
            raise APIError(
                400, f"{param} is {value!r}; it may be one of {', '.join(PRIORITIES)}", "invalid_request_error", param
            )
    return "batch" if any(value == "batch" for _, value in chosen) else "interactive"


def requested_tokens(body: Any, chat: bool, thinking_budget: int, answer_tokens: int) -> int:
    """What a request may generate: per choice (prompts x ``n``) its thinking budget and its
    answer's cap, the app's defaults where it sets none. Malformed values count as unset: the
    handler refuses them and the charge is given back."""
    if not isinstance(body, dict):
        return thinking_budget + answer_tokens
    glimp = body.get("glimp")
    glimp = glimp if isinstance(glimp, dict) else {}
    budget = _count(glimp.get("thinking_budget"), thinking_budget)
    answer = _count(body.get("max_completion_tokens"), 0) or _count(body.get("max_tokens"), answer_tokens)
    prompt = body.get("prompt")
    prompts = len(prompt) if not chat and isinstance(prompt, list) and prompt and not _is_int(prompt[0]) else 1
    return prompts * _count(body.get("n"), 1) * (budget + answer)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any, default: int) -> int:
    return value if _is_int(value) and value >= 1 else default


class FlowControl:
    """One router replica's admission: requests in flight, the batch bound and the key buckets."""

    def __init__(
        self,
        serving: ServingConfig,
        defaults: Callable[[], tuple[int, int]],
        clock: Clock | None = None,
        refused: Callable[[str, str | None], None] | None = None,
    ):
        """``defaults``: the app's thinking budget and answer cap now (they change with
        ``user_config``); ``refused(reason, key)`` is told of every 429 (a metric)."""
        router = serving.router
        self.batch_limit = router.batch_share * router.max_ongoing_requests
        self.retry_after_s = router.retry_after_s
        self.max_request_bytes = serving.request_limits.max_request_bytes
        per_key = {
            k.name: k.rate_limits if k.rate_limits is not None else serving.rate_limits for k in serving.api_keys
        }
        self.limiter = RateLimiter(per_key, router.num_replicas, clock)
        self.defaults = defaults
        self.refused = refused or (lambda reason, key: None)
        self.in_flight = 0

    @asynccontextmanager
    async def admission(self, request: Request, key: str | None, response: Response) -> AsyncIterator[None]:
        """Let a generation request in, or raise a 429; it stays in flight until the block ends."""
        self.in_flight += 1
        try:
            body = await self._body(request, key)
            priority = priority_of(request.headers.get(PRIORITY_HEADER), body)
            if priority == "batch" and self.in_flight - 1 >= self.batch_limit:
                self.refused("priority", key)
                raise TooManyRequests(
                    f"the server is busy: batch-priority requests are let in while fewer than {self.batch_limit:g} "
                    "requests run on this router replica; interactive ones are served first",
                    "server_overloaded",
                    "batch_shed",
                    retry_headers(self.retry_after_s),
                )
            chat = request.url.path.rstrip("/").endswith("/chat/completions")
            tokens = requested_tokens(body, chat, *self.defaults()) if key in self.limiter.keys else 0
            refusal = self.limiter.admit(key, tokens)
            if refusal is not None:
                self.refused(refusal.bucket, key)
                raise self._rate_limited(key, refusal)
            response.headers.update(self.limiter.headers(key))
            try:
                yield
            except APIError as exc:
                if exc.status < 500:  # refused before any model call: nothing was generated
                    self.limiter.give_back(key, tokens)
                raise
            generated = getattr(request.state, "completion_tokens", None)
            if isinstance(generated, int) and generated < tokens:  # where the handler reports its usage
                self.limiter.give_back(key, tokens - generated)
        finally:
            self.in_flight -= 1

    async def _body(self, request: Request, key: str | None) -> Any:
        """The JSON body when the key is charged tokens or the body may carry a priority; ``None``
        otherwise, or when it is not JSON (the handler answers that)."""
        raw = await read_body(request, self.max_request_bytes)
        if key not in self.limiter.keys and b'"priority"' not in raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return None

    def _rate_limited(self, key: str | None, refusal: Refusal) -> TooManyRequests:
        per = "requests" if refusal.bucket == "requests" else "tokens"
        message = (
            f"rate limit reached for API key {key!r} on {per} per minute: limit {refusal.limit:g}, requested "
            f"{refusal.requested}; try again in {refusal.wait_s:.1f}s"
        )
        headers = {**self.limiter.headers(key), **retry_headers(refusal.wait_s)}
        return TooManyRequests(message, per, "rate_limit_exceeded", headers)


_UNSET = object()
_FLOW: Any = _UNSET  # this process's router replica's, made on its first request


def configure(control: FlowControl | None) -> None:
    """Set this process's flow control (``None``: none); a Serve replica makes its own."""
    global _FLOW
    _FLOW = control


def current() -> FlowControl | None:
    global _FLOW
    if _FLOW is _UNSET:
        _FLOW = _from_replica()
    return cast("FlowControl | None", _FLOW)


def _from_replica() -> FlowControl | None:
    """The flow control of the router this Serve replica runs, from its config."""
    try:
        from ray import serve

        router: Any = serve.get_replica_context().servable_object
    except Exception:  # not on a Serve replica
        return None
    if not isinstance(getattr(router, "config", None), AppConfig):
        logger.warning("no flow control: the replica's servable has no AppConfig")
        return None
    from ray.serve.metrics import Counter

    counter = Counter(
        "glimp_refused_requests",
        description="Requests refused with 429 by this router: batch shed (priority) or over a key's bucket "
        "(requests, tokens).",
        tag_keys=("reason", "key"),  # type: ignore[arg-type]  # Ray annotates it as a 1-tuple
    )

    def defaults() -> tuple[int, int]:
        limits = router.config.limits  # user_config may change them
        return limits.thinking_budget, limits.answer_max_tokens

    return FlowControl(
        router.config.serving,
        defaults,
        refused=lambda reason, key: counter.inc(tags={"reason": reason, "key": key or ""}),
    )


@asynccontextmanager
async def admitted(request: Request, key: str | None, response: Response) -> AsyncIterator[None]:
    """Flow control of one request: generation routes only, and only where it is configured."""
    control = current()
    if control is None or not request.url.path.rstrip("/").endswith(GENERATION_PATHS) or request.method != "POST":
        yield
        return
    async with control.admission(request, key, response):
        yield
