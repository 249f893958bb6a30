"""API keys without Ray: the config never holds a key, and a key is checked by its digest."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.auth import ApiKeys, sha256_hex
from deployments.config import ServingConfig


def test_a_key_is_found_by_name_only_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMP_TEST_KEY", "sk-from-env")
    keys = ApiKeys.of([("a", sha256_hex("sk-a"), None), ("env", None, "GLIMP_TEST_KEY")])
    assert keys.enabled
    assert keys.name_of("Bearer sk-a") == "a" and keys.name_of("bearer  sk-a ") == "a"
    assert keys.name_of("Bearer sk-from-env") == "env"
    for wrong in (None, "", "Bearer", "Bearer ", "Bearer sk-b", "Basic sk-a", "sk-a", "Bearer sk-a2"):
        assert keys.name_of(wrong) is None, wrong
    assert not ApiKeys().enabled


def test_a_key_from_an_unset_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIMP_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="GLIMP_MISSING_KEY is not set"):
        ApiKeys.of([("x", None, "GLIMP_MISSING_KEY")])


def test_the_config_takes_a_digest_or_an_environment_variable_never_a_key() -> None:
    config = ServingConfig.model_validate({"api_keys": [{"name": "a", "key_sha256": sha256_hex("k")}]})
    assert config.api_keys[0].name == "a"
    for bad, match in (
        ({"name": "a", "key": "sk-plain"}, "Extra inputs"),
        ({"name": "a"}, "exactly one of key_sha256 and key_env"),
        ({"name": "a", "key_sha256": sha256_hex("k"), "key_env": "K"}, "exactly one"),
        ({"name": "a", "key_sha256": "not-hex"}, "key_sha256"),
    ):
        with pytest.raises(ValidationError, match=match):
            ServingConfig.model_validate({"api_keys": [bad]})
    with pytest.raises(ValidationError, match="unique"):
        ServingConfig.model_validate({"api_keys": [{"name": "a", "key_env": "K1"}, {"name": "a", "key_env": "K2"}]})


def test_the_router_sheds_a_full_queue_with_429() -> None:
    options = ServingConfig.model_validate({"router": {"max_queued_requests": 8, "retry_after_s": 2}}).router_options()
    assert options["max_queued_requests"] == 8
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 2}
    assert ServingConfig().router_options()["max_queued_requests"] == 512  # bounded by default


def test_rate_limits_are_per_key_with_a_default_for_keys_that_set_none() -> None:
    config = ServingConfig.model_validate(
        {
            "api_keys": [
                {"name": "a", "key_env": "A", "rate_limits": {"requests_per_minute": 10, "request_burst": 2}},
                {"name": "b", "key_env": "B"},
            ],
            "rate_limits": {"tokens_per_minute": 50_000},
            "router": {"batch_share": 0.25},
        }
    )
    assert config.api_keys[0].rate_limits is not None and config.api_keys[0].rate_limits.request_burst == 2
    assert config.api_keys[1].rate_limits is None and config.rate_limits.tokens_per_minute == 50_000
    assert ServingConfig().router.batch_share == 0.5
    for bad, match in (
        ({"rate_limits": {"request_burst": 5}}, "request_burst needs requests_per_minute"),
        ({"rate_limits": {"tokens_per_minute": 0}}, "greater than 0"),
        ({"rate_limits": {"requests_per_min": 5}}, "Extra inputs"),
        ({"router": {"batch_share": 0}}, "greater than 0"),
        ({"router": {"batch_share": 1.5}}, "less than or equal to 1"),
    ):
        with pytest.raises(ValidationError, match=match):
            ServingConfig.model_validate(bad)
