"""API keys: ``Authorization: Bearer <key>`` on every route but ``/health``.

The config never holds a key: each is named and given either as the SHA-256 of the key
(``key_sha256``) or as the environment variable the router reads it from (``key_env``). A
presented key is hashed and compared with every configured digest in constant time
(``hmac.compare_digest``), so neither the key nor which key matched leaks through timing. The
key's *name* (never the key) goes on the request's span and metrics. No keys configured: the
server is open, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from fastapi import Request, Response

from deployments import flow
from deployments.errors import APIError

HEALTH_PATHS = ("/health",)


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """Named SHA-256 digests of the keys this router accepts (none: no check)."""

    digests: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, keys: Iterable[tuple[str, str | None, str | None]]) -> ApiKeys:
        """From ``(name, key_sha256, key_env)`` triples; a ``key_env`` must be set and non-empty."""
        digests = []
        for name, key_sha256, key_env in keys:
            if key_env is not None:
                key = os.environ.get(key_env, "")
                if not key:
                    raise ValueError(f"API key {name!r}: the environment variable {key_env} is not set on the router")
                key_sha256 = sha256_hex(key)
            assert key_sha256 is not None
            digests.append((name, bytes.fromhex(key_sha256)))
        return cls(tuple(digests))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def name_of(self, authorization: str | None) -> str | None:
        """The name of the key an ``Authorization`` header carries, or ``None``. Every digest is
        compared, matched or not, so the time taken does not tell which one matched."""
        scheme, _, key = (authorization or "").partition(" ")
        presented = hashlib.sha256(key.strip().encode()).digest()
        found = None
        for name, digest in self.digests:
            if hmac.compare_digest(presented, digest) and scheme.lower() == "bearer" and key.strip():
                found = name
        return found


_KEYS = ApiKeys()  # this process's router sets them (one router replica per process)


def configure(keys: ApiKeys) -> None:
    global _KEYS
    _KEYS = keys


async def require_api_key(request: Request, response: Response) -> AsyncIterator[None]:
    """FastAPI dependency of every route: a 401 in OpenAI's error shape without a valid key, then
    flow control (``flow.py``: priority and the key's rate limits, a 429 past them). It yields
    while the request is served, so a request counts as in flight until its response is sent."""
    name = None
    if _KEYS.enabled and not request.url.path.rstrip("/").endswith(HEALTH_PATHS):
        name = _check(request)
    async with flow.admitted(request, name, response):
        yield


def _check(request: Request) -> str:
    header = request.headers.get("authorization")
    name = _KEYS.name_of(header)
    if name is None:
        what = "no API key was given" if not header else "the API key is not valid"
        raise APIError(
            401,
            f"{what}: send it as 'Authorization: Bearer <key>'",
            "invalid_request_error",
            code="invalid_api_key",
        )
    request.state.api_key_name = name
    return name


def key_name(request: Request) -> str | None:
    """The name of the key the request came with (``None`` on an open server)."""
    return getattr(request.state, "api_key_name", None)
