"""The KV budget in bytes: what a token costs, and an engine that never holds more than its budget
(measured from the tensors it holds) while every request completes by waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from transformers import DynamicCache, GPT2Config, Qwen2Config, Qwen3Config

from glimp_ray.config import ModelConfig
from glimp_ray.engine.base import PromptTooLongError
from glimp_ray.engine.decode_batch import DecodeBatch
from glimp_ray.engine.kv_memory import GIB, KVBudget, kv_budget_bytes, kv_bytes_per_token
from glimp_ray.engine.session import SessionCache
from glimp_ray.types import GenerateSpec, SamplingParams, StepRequest, StepResult
from tests.numeric import assert_logits_close

GREEDY = SamplingParams(temperature=0)
LARGE_BYTES_PER_TOKEN = 4 * 4 * 16 * 2 * 4  # the tiny large model: 4 layers, 4 KV heads of 16, float32
SMALL_BYTES_PER_TOKEN = 2 * 2 * 8 * 2 * 4  # the tiny small model: 2 layers, 2 KV heads of 8, float32


def test_bytes_per_token_from_the_model_config() -> None:
    # DeepSeek-R1-Distill-Qwen-32B's shape: 64 layers, 8 KV heads of 5120 / 40 = 128.
    qwen2_32b = Qwen2Config(hidden_size=5120, num_attention_heads=40, num_key_value_heads=8, num_hidden_layers=64)
    assert kv_bytes_per_token(qwen2_32b, torch.bfloat16) == 64 * 8 * 128 * 2 * 2 == 262144
    assert kv_bytes_per_token(qwen2_32b, torch.float32) == 2 * 262144
    # Qwen3-4B: its head_dim (128) is not hidden_size / heads (2560 / 32 = 80).
    qwen3_4b = Qwen3Config(
        hidden_size=2560, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=36, head_dim=128
    )
    assert kv_bytes_per_token(qwen3_4b, torch.bfloat16) == 36 * 8 * 128 * 2 * 2
    # GPT-2 has no KV heads of its own: every attention head keeps its keys and values.
    assert kv_bytes_per_token(GPT2Config(), torch.float32) == 12 * 12 * 64 * 2 * 4


@pytest.mark.parametrize("which", ["small", "large"])
def test_bytes_per_token_match_a_real_cache(make_engine: Any, which: str) -> None:
    model = make_engine(which).model
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([[5, 6, 7, 8, 9]]), use_cache=True, cache=cache)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert held == 5 * kv_bytes_per_token(model.config, model.dtype)


def test_budget_defaults_and_configured_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kv_budget_bytes(torch.device("cpu")) == 4 * GIB
    assert kv_budget_bytes(torch.device("cpu"), 12345) == 12345
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * GIB, 80 * GIB))
    assert kv_budget_bytes(torch.device("cuda", 0)) == 8 * GIB  # 80% of the free memory
    assert kv_budget_bytes(torch.device("cuda", 0), 3 * GIB) == 3 * GIB


def test_a_replica_with_part_of_a_gpu_takes_only_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (70 * GIB, 80 * GIB))
    cuda = torch.device("cuda", 0)
    assert kv_budget_bytes(cuda) == 56 * GIB  # a whole GPU: 80% of what is free
    assert kv_budget_bytes(cuda, gpu_share=1.0, weight_bytes=8 * GIB) == 56 * GIB
    # Half a GPU: 80% of half the device, less its own weights; two such replicas fit beside each other.
    assert kv_budget_bytes(cuda, gpu_share=0.5, weight_bytes=8 * GIB) == 24 * GIB
    assert 2 * (24 + 8) <= 0.8 * 80
    # A configured budget is taken as given.
    assert kv_budget_bytes(cuda, 3 * GIB, gpu_share=0.5) == 3 * GIB


def test_the_config_field_reaches_the_engine(make_engine: Any) -> None:
    hf = ModelConfig(model="m", kv_cache_gib=0.5).engine_kwargs()
    assert hf["kv_cache_gib"] == 0.5
    assert "kv_cache_gib" not in ModelConfig(model="m", engine="vllm").engine_kwargs()
    engine = make_engine("large", kv_cache_gib=0.001)
    assert engine.budget.capacity == round(0.001 * GIB)
    assert engine.budget.bytes_per_token == LARGE_BYTES_PER_TOKEN


def test_a_budget_too_small_for_one_request(make_engine: Any) -> None:
    with pytest.raises(ValueError, match="too few for one request of 512 tokens: raise kv_cache_gib"):
        make_engine("large", kv_cache_bytes=300 * LARGE_BYTES_PER_TOKEN, max_context=512)
    # Without a max_context of its own the model's (1024) is lowered to what the budget holds.
    engine = make_engine("large", kv_cache_bytes=300 * LARGE_BYTES_PER_TOKEN)
    assert engine.max_context == 299
    request = StepRequest("long", prompt="7 3 9 1 " * 80, generate=GenerateSpec(4, (), GREEDY))  # 321 tokens
    with pytest.raises(PromptTooLongError, match="has a context of 299"):
        asyncio.run(engine.step(request))


def test_idle_sessions_are_evicted_by_bytes_beside_what_is_reserved() -> None:
    cache = SessionCache(100, 10_000, KVBudget(capacity=1000, bytes_per_token=10))
    for sid, tokens in (("a", 30), ("b", 30), ("c", 30)):
        session = cache.get(sid)
        session.append(list(range(tokens)), "x" * tokens, list(range(1, tokens + 1)))
        session.cache, session.kv_len = object(), tokens
    cache.get("a").busy = True
    assert cache.cached_bytes == 900 and cache.idle_bytes == 600
    assert cache.evict(reserved_bytes=400) == []  # 600 idle + 400 reserved fit
    assert cache.evict(reserved_bytes=500) == ["b"]  # the oldest idle one goes; busy "a" stays
    assert "a" in cache and "c" in cache and cache.idle_bytes == 300


def test_decode_buffers_stay_within_their_room(make_engine: Any) -> None:
    """Two rows of 1000 tokens: unbounded, the buffers take 4 rows x 2596 columns (5.2 times what
    the rows use); given room for 2 x 1100 they stay within it, with the same logits."""
    model = make_engine("small").model
    position = kv_bytes_per_token(model.config, model.dtype)
    room = 2 * 1100 * position
    asked: list[int] = []

    def grant(need: int) -> int:
        asked.append(need)
        return room

    def rows() -> list[tuple[str, DynamicCache]]:
        out = []
        for key, first in (("a", 5), ("b", 9)):
            cache = DynamicCache(config=model.config)
            with torch.inference_mode():
                model(input_ids=torch.tensor([[first + i % 50 for i in range(1000)]]), use_cache=True, cache=cache)
            out.append((key, cache))
        return out

    free, bounded = DecodeBatch(model, "cache"), DecodeBatch(model, "cache", room=grant)
    free.join(rows())
    bounded.join(rows())
    for t in range(60):
        expected, logits = free.step([10 + t % 7, 11]), bounded.step([10 + t % 7, 11])
        assert_logits_close(logits, expected, f"token {t}")
        assert bounded.nbytes <= room
    assert free.keys[0].shape[0] * free.keys[0].shape[2] == 4 * 2596
    assert bounded.keys[0].shape[0] * bounded.keys[0].shape[2] == 2 * 1100
    assert asked == [1001 * position, 2 * 1001 * position]  # each layout asked for what its rows need


def held_kv_bytes(engine: Any) -> int:
    """Bytes of every KV tensor the engine holds (sessions' caches, the decode batch), counted by
    the storage under them, each once."""
    tensors: list[Any] = []
    for session in engine.sessions:
        if session.cache is not None:
            tensors += [t for layer in session.cache.layers for t in (layer.keys, layer.values)]
    batch = engine.batch
    tensors += [*batch.keys, *batch.values]
    if batch.solo is not None:
        tensors += [t for layer in batch.solo.layers for t in (layer.keys, layer.values)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    return sum(storages.values())


def serve_and_measure(engine: Any, requests: list[StepRequest]) -> tuple[list[list[StepResult]], dict[str, int]]:
    """Serve the requests at once, then each session's continuation at once; after every turn of
    the step loop, measure what the engine holds and check its own account of it."""
    peak = {"held": 0, "running": 0, "unaccounted": 0}
    run_once = engine.run_once

    def measured() -> None:
        run_once()
        held = held_kv_bytes(engine)
        peak["held"] = max(peak["held"], held)
        peak["running"] = max(peak["running"], len(engine.scheduler.running))
        peak["unaccounted"] = max(peak["unaccounted"], held - engine.memory.held_bytes)

    engine.run_once = measured  # the worker thread calls it between turns

    async def run() -> list[list[StepResult]]:
        first = await asyncio.gather(*(engine.step(r) for r in requests))
        again = [
            StepRequest(r.session_id, prompt=r.prompt, transcript=f.text + " and", generate=r.generate)
            for r, f in zip(requests, first, strict=True)
        ]
        return [list(first), list(await asyncio.gather(*(engine.step(r) for r in again)))]

    return asyncio.run(run()), peak


@pytest.mark.parametrize("batching", [True, False])
def test_a_small_budget_holds_with_32_concurrent_requests(make_engine: Any, batching: bool) -> None:
    # The small model's tokenizer is character-level: a session evicted and tokenized again from
    # its text gets the same tokens, so the continuations match the unbounded engine's exactly.
    budget = 1000 * SMALL_BYTES_PER_TOKEN  # about 8 of these requests' rows at once
    requests = [
        StepRequest(f"s{i}", prompt=f"question {i} " * (1 + i % 7), generate=GenerateSpec(12, (), GREEDY))
        for i in range(32)
    ]
    unbounded, free_peak = serve_and_measure(make_engine("small", batching=batching, max_context=256), requests)
    engine = make_engine("small", batching=batching, max_context=256, kv_cache_bytes=budget)
    bounded, peak = serve_and_measure(engine, requests)

    assert free_peak["held"] > 2 * budget  # unbounded, this load holds far more than the budget
    assert peak["held"] <= budget
    assert peak["held"] >= budget // 2  # and the budget is what held it back
    assert 1 < peak["running"] < 32  # requests waited for room
    for ours, theirs in zip(bounded, unbounded, strict=True):
        for a, b in zip(ours, theirs, strict=True):  # every request completed, with the same tokens
            assert isinstance(a, StepResult) and a.generated_tokens == 12
            assert a.token_ids == b.token_ids
    assert peak["unaccounted"] <= 0  # the engine's account covers every byte it holds
