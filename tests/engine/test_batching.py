"""Continuous batching: the decode batch and batched prefill against one-sequence forwards, and
the engine batched against itself unbatched (greedy outputs, sampling, stops, glimpses,
session reuse, bounds, cancellation)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import torch
from transformers import DynamicCache

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.engine.decode_batch import DecodeBatch
from glimp_ray.engine.kv_tensors import batchable
from glimp_ray.engine.prefill import prefill
from glimp_ray.engine.sampling import build_processors, make_generator, sample_tokens
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult
from tests.numeric import assert_logits_close, entropy_approx, tensors_close

GREEDY = SamplingParams(temperature=0)
PARAMS = CollabParams(temperature=0, delimiter=" ", step_max_tokens=12, thinking_budget=60, answer_max_tokens=8)


@torch.inference_mode()
def reference(model: Any, ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """One sequence, one forward: its cache and last logits."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([ids]), use_cache=True, cache=cache)
    return cache, out.logits[0, -1]


@torch.inference_mode()
def extend(model: Any, cache: DynamicCache, token: int) -> torch.Tensor:
    return model(input_ids=torch.tensor([[token]]), use_cache=True, cache=cache).logits[0, -1]


def same_cache(a: DynamicCache, b: DynamicCache) -> bool:
    return a.get_seq_length() == b.get_seq_length() and all(
        tensors_close(x.keys, y.keys) and tensors_close(x.values, y.values)
        for x, y in zip(a.layers, b.layers, strict=True)
    )


def test_decode_batch_matches_one_sequence_forwards(make_engine: Any) -> None:
    model = make_engine("large").model
    rng = random.Random(0)
    prompts = {key: [rng.randrange(3, 200) for _ in range(rng.randint(3, 30))] for key in "abcde"}
    refs = {key: reference(model, ids) for key, ids in prompts.items()}
    mine = {key: reference(model, ids)[0] for key, ids in prompts.items()}
    batch = DecodeBatch(model, "cache")
    batch.join([("a", mine["a"])])  # alone: it decodes on its own cache
    assert batch.solo is not None
    active = ["a"]
    for t in range(12):
        if t == 2:
            batch.join([("b", mine["b"]), ("c", mine["c"])])  # longer and shorter rows join
            active += ["b", "c"]
        if t == 5:
            back = batch.leave(["b"])  # a middle row leaves; the last one moves into its place
            assert same_cache(back["b"], refs["b"][0])
            active.remove("b")
            batch.join([("d", mine["d"]), ("e", mine["e"])])
            active += ["d", "e"]
        tokens = {key: rng.randrange(3, 200) for key in active}
        logits = batch.step([tokens[key] for key in batch.rows])  # type: ignore[index]
        for key, row in zip(batch.rows, logits, strict=True):
            expected = extend(model, refs[key][0], tokens[key])  # type: ignore[index]
            assert_logits_close(row, expected, f"row {key} at token {t}")
    back = batch.leave(list(batch.rows))
    assert set(back) == {"a", "c", "d", "e"} and len(batch) == 0
    for key, cache in back.items():
        assert same_cache(cache, refs[key][0])  # type: ignore[index]


def test_batched_prefill_matches_one_sequence_prefills(make_engine: Any) -> None:
    model = make_engine("large").model
    rng = random.Random(1)
    history = [[rng.randrange(3, 200) for _ in range(n)] for n in (0, 5, 17, 9)]
    new = [[rng.randrange(3, 200) for _ in range(n)] for n in (7, 1, 4, 12)]
    entries = [(reference(model, h)[0] if h else None, n) for h, n in zip(history, new, strict=True)]
    caches, logits = prefill(model, "cache", entries)
    for h, n, cache, row in zip(history, new, caches, logits, strict=True):
        full_cache, full_logits = reference(model, h + n)
        assert_logits_close(row, full_logits, "prefill row")
        assert same_cache(cache, full_cache)


def test_sample_tokens_draws_in_a_batch_what_each_row_draws_alone() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    params = [SamplingParams(temperature=t, top_p=p, seed=i) for i, (t, p) in enumerate([(0, 1), (0.7, 0.9)] * 3)]

    def rows() -> list[Any]:
        return [(p, build_processors(p), make_generator(p, "cpu")) for p in params]

    alone = [sample_tokens(row[None], [spec])[0] for row, spec in zip(logits, rows(), strict=True)]
    assert sample_tokens(logits, rows()) == alone
    assert alone[0] == int(logits[0].argmax())  # greedy rows take the argmax


def record_batches(engine: Any) -> Counter[int]:
    sizes: Counter[int] = Counter()
    step = engine.batch.step

    def counted(tokens: Any) -> Any:
        sizes[len(tokens)] += 1
        return step(tokens)

    engine.batch.step = counted
    return sizes


async def collaborate(collab: Collaborator, prompts: list[str], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, prompt: str) -> Any:
        async with gate:
            return await collab.run(prompt=prompt, request_id=f"r{i}")

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


def test_concurrent_greedy_collaboration_is_identical_to_unbatched(make_engine: Any) -> None:
    prompts = [f"Question {i}: what is {i} times {i + 3}? " + "Think. " * (i % 4) for i in range(10)]
    batched = Collaborator(make_engine("small"), make_engine("large"), PARAMS)
    plain = Collaborator(make_engine("small", batching=False), make_engine("large", batching=False), PARAMS)
    sizes = record_batches(batched.clients["small"]), record_batches(batched.clients["large"])
    together = asyncio.run(collaborate(batched, prompts, 10))
    alone = asyncio.run(collaborate(plain, prompts, 1))
    for a, b in zip(together, alone, strict=True):
        assert [(s.model, s.text) for s in a.steps] == [(s.model, s.text) for s in b.steps]
        assert a.answer == b.answer
        for s, t in zip(a.steps, b.steps, strict=True):
            assert s.entropy == entropy_approx(t.entropy)  # glimpses taken in batches
        # Every step after the first reuses its session's cache, batched or not.
        assert all(s.reused_tokens > 0 for s in a.steps[1:])
    assert max(sizes[0]) > 1 and max(sizes[1]) > 1  # the decodes really were batched


def test_per_request_sampling_and_stops_in_one_batch(make_engine: Any) -> None:
    engine = make_engine("small")
    plain = make_engine("small", batching=False)
    specs = [
        GenerateSpec(20, (" ",), SamplingParams(temperature=0.9, top_p=0.9, seed=1)),
        GenerateSpec(20, ("e",), SamplingParams(temperature=0.5, top_p=1.0, seed=2)),
        GenerateSpec(15, (), GREEDY),
        GenerateSpec(25, (" ", "a"), SamplingParams(temperature=1.2, top_p=0.8, seed=3)),
        GenerateSpec(7, (), SamplingParams(temperature=0.7, top_p=0.95, seed=4)),
    ]
    requests = [StepRequest(f"s{i}", prompt=f"prompt number {i} ", generate=g) for i, g in enumerate(specs)]
    sizes = record_batches(engine)

    async def together() -> list[StepResult]:
        return await asyncio.gather(*(engine.step(r) for r in requests))

    batched = asyncio.run(together())
    alone = [asyncio.run(plain.step(r)) for r in requests]
    assert max(sizes) > 1
    for a, b in zip(batched, alone, strict=True):
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
    assert batched[2].generated_tokens == 15 and batched[4].generated_tokens == 7


def test_batch_size_and_memory_bounds_are_kept_and_nothing_starves(make_engine: Any) -> None:
    requests = [
        StepRequest(f"s{i}", prompt=f"question {i} " * (i + 1), generate=GenerateSpec(8, (), GREEDY)) for i in range(6)
    ]

    def serve(**kwargs: Any) -> tuple[list[StepResult], Counter[int]]:
        engine = make_engine("large", **kwargs)
        sizes = record_batches(engine)

        async def run() -> list[StepResult]:
            return await asyncio.gather(*(engine.step(r) for r in requests))

        return asyncio.run(run()), sizes

    free, free_sizes = serve()
    two, two_sizes = serve(max_running=2)
    one, one_sizes = serve(max_batch_tokens=1)  # full as soon as one row is in
    assert max(free_sizes) == 6 and max(two_sizes) == 2 and max(one_sizes) == 1
    for results in (two, one):
        assert [r.token_ids for r in results] == [r.token_ids for r in free]  # everyone served, same tokens


def test_cancelled_row_leaves_the_batch_and_the_others_finish(make_engine: Any) -> None:
    engine = make_engine("large")
    keep = [StepRequest(f"k{i}", prompt=f"keep {i}", generate=GenerateSpec(40, (), GREEDY)) for i in range(3)]
    expected = [asyncio.run(make_engine("large", batching=False).step(r)) for r in keep]

    async def run() -> list[Any]:
        doomed = asyncio.ensure_future(
            engine.step(StepRequest("x", prompt="doomed", generate=GenerateSpec(500, (), GREEDY)))
        )
        others = [asyncio.ensure_future(engine.step(r)) for r in keep]
        await asyncio.sleep(0.05)
        doomed.cancel()
        return await asyncio.gather(doomed, *others, return_exceptions=True)

    doomed, *results = asyncio.run(run())
    assert isinstance(doomed, asyncio.CancelledError)
    assert [r.token_ids for r in results] == [r.token_ids for r in expected]
    for _ in range(200):  # results are sent before the finished rows leave, in the same loop turn
        if len(engine.batch) == 0:
            break
        time.sleep(0.01)
    assert len(engine.batch) == 0 and engine.scheduler.running == []
    assert "x" not in engine.sessions  # the cancelled request's session is dropped


def test_fused_glimpse_routing_in_a_batch(make_engine: Any) -> None:
    engine = make_engine("small")
    glimpse = GlimpseSpec("full", threshold=None)
    probe = [asyncio.run(engine.step(StepRequest(f"p{i}", prompt=f"text {i}", glimpse=glimpse))) for i in range(4)]
    entropies = sorted(r.entropy for r in probe)
    tau = (entropies[1] + entropies[2]) / 2  # two of the four route, two continue
    requests = [
        StepRequest(
            f"g{i}",
            prompt=f"text {i}",
            glimpse=GlimpseSpec("full", threshold=tau),
            generate=GenerateSpec(6, (), GREEDY),
        )
        for i in range(4)
    ]

    async def together() -> list[StepResult]:
        return await asyncio.gather(*(engine.step(r) for r in requests))

    results = asyncio.run(together())
    for r, p in zip(results, probe, strict=True):
        assert r.entropy == entropy_approx(p.entropy)
        assert r.routed == (p.entropy > tau)
        assert r.token_ids == [] if r.routed else r.generated_tokens == 6


def test_only_full_attention_caches_are_batched() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def model(**window: Any) -> Any:
        shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        return Qwen2ForCausalLM(Qwen2Config(**shape, num_attention_heads=2, num_key_value_heads=2, **window))

    assert not batchable(model(use_sliding_window=True, sliding_window=8, max_window_layers=0))
    assert batchable(model())


def drive(engine: Any, requests: dict[str, StepRequest], out: dict[str, Any]) -> dict[str, Any]:
    """Queue requests on the engine's scheduler directly; results land in ``out``."""
    from glimp_ray.engine.scheduler import Sequence

    seqs = {}
    for name, request in requests.items():
        seqs[name] = Sequence(request, lambda r, n=name: out.__setitem__(n, r))
        engine.scheduler.add(seqs[name])
    return seqs


def drain(engine: Any) -> None:
    for _ in range(500):
        if not engine.scheduler.has_work:
            return
        engine.run_once()


def test_a_request_cancelled_during_a_prefill_never_leaves_an_orphan_row(make_engine: Any) -> None:
    engine = make_engine("large")
    out: dict[str, Any] = {}
    drive(engine, {"A": StepRequest("s", prompt="hello there", generate=GenerateSpec(3, (), GREEDY))}, out)
    drain(engine)
    drive(
        engine,
        {f"O{i}": StepRequest(f"o{i}", prompt=f"other {i}", generate=GenerateSpec(30, (), GREEDY)) for i in range(2)},
        out,
    )
    engine.run_once()
    engine.run_once()
    # B continues session s by one token (it rides the decode forward); C needs a prefill.
    continuing = StepRequest("s", prompt="hello there", transcript=out["A"].text, generate=GenerateSpec(30, (), GREEDY))
    seqs = drive(
        engine,
        {"B": continuing, "C": StepRequest("c", prompt="a long prompt " * 5, generate=GenerateSpec(5, (), GREEDY))},
        out,
    )
    prefills = engine.runner.prefill

    def cancel_meanwhile(group: Any, fail: Any) -> None:
        seqs["B"].aborted = True  # the caller goes away while C is prefilled
        prefills(group, fail)

    engine.runner.prefill = cancel_meanwhile
    engine.run_once()
    engine.runner.prefill = prefills
    drain(engine)
    assert isinstance(out["B"], asyncio.CancelledError)
    assert all(isinstance(out[k], StepResult) for k in ("O0", "O1", "C"))
    assert [out[f"O{i}"].generated_tokens for i in range(2)] == [30, 30]
    assert len(engine.batch) == 0 and engine.scheduler.running == []


def test_a_failed_leave_loses_only_caches_never_tokens(make_engine: Any) -> None:
    engine = make_engine("large")
    out: dict[str, Any] = {}
    leave = engine.batch.leave
    calls = {"n": 0}

    def flaky(keys: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return leave(keys)

    engine.batch.leave = flaky
    drive(engine, {"O": StepRequest("o", prompt="other", generate=GenerateSpec(40, (), GREEDY))}, out)
    drive(engine, {"A": StepRequest("s", prompt="hello there", generate=GenerateSpec(4, (), GREEDY))}, out)
    drain(engine)
    assert isinstance(out["A"], StepResult)  # A had finished; O was in the batch when it broke
    then = StepRequest(
        "s", prompt="hello there", transcript=out["A"].text + " and more", generate=GenerateSpec(8, (), GREEDY)
    )
    drive(engine, {"B": then}, out)
    drain(engine)
    reference = asyncio.run(make_engine("large", batching=False).step(then))
    assert out["B"].token_ids == reference.token_ids  # the lost cache was prefilled again


def test_decode_buffers_stay_near_what_the_rows_use(make_engine: Any) -> None:
    model = make_engine("small").model
    batch = DecodeBatch(model, "cache")
    batch.join([("a", reference(model, [5, 6, 7])[0]), ("b", reference(model, [8, 9])[0])])
    for _ in range(1500):
        batch.step([10, 11])
        rows, columns = batch.keys[0].shape[0], batch.keys[0].shape[2]
        width = batch.end - batch.start
        assert rows <= 4 and columns <= 2.5 * width + 96 + 1
    short = DecodeBatch(model, "cache")
    short.join([("a", reference(model, [5, 6, 7])[0]), ("b", reference(model, [8, 9])[0])])
    short.step([10, 11])
    short.join([("long", reference(model, list(range(3, 60)) * 8)[0])])  # a long row joins...
    wide = short.keys[0].shape[2]
    assert wide >= 456
    short.leave(["long"])  # ... and leaves: the buffers shrink back
    assert short.keys[0].shape[2] <= 2.5 * (short.end - short.start) + 96 < wide


def test_short_continuations_fed_through_the_decode_batch_match_a_prefill(make_engine: Any) -> None:
    def run(engine: Any) -> list[StepResult]:
        async def go() -> list[StepResult]:
            first = await asyncio.gather(
                *(
                    engine.step(StepRequest(f"s{i}", prompt=f"ask {i}", generate=GenerateSpec(5, (), GREEDY)))
                    for i in range(4)
                )
            )
            # Each session goes on with its own text plus 0..3 new characters (1..4 new tokens).
            again = [
                StepRequest(
                    f"s{i}", prompt=f"ask {i}", transcript=r.text + "xyz"[:i], generate=GenerateSpec(6, (), GREEDY)
                )
                for i, r in enumerate(first)
            ]
            return list(first) + list(await asyncio.gather(*(engine.step(r) for r in again)))

        return asyncio.run(go())

    batched, plain = run(make_engine("small")), run(make_engine("small", batching=False))
    for a, b in zip(batched, plain, strict=True):
        assert (a.token_ids, a.reused_tokens, a.prefill_tokens) == (b.token_ids, b.reused_tokens, b.prefill_tokens)
    assert [r.prefill_tokens for r in batched[4:]] == [1, 2, 3, 4]
