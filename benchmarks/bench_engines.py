"""HFEngine vs VLLMEngine on one model: tokens/s for one request and for 16 concurrent ones, and
the glimpse latency (a 1-token top-20 glimpse). Runs in the vLLM virtualenv (``make setup-vllm``):

    .venv-vllm/bin/python benchmarks/bench_engines.py              # random-init ~75M Qwen2
    .venv-vllm/bin/python benchmarks/bench_engines.py --model DIR  # any local model
    .venv-vllm/bin/python benchmarks/bench_engines.py --task 48    # GlimpRouter vs large-only, demo task

The default model is built locally (no hub): Qwen2 shapes, hidden 768, 12 layers (~75M
parameters), the tiny character-level tokenizer. Greedy, 64 new tokens per request, prompts through
its chat template. vLLM runs with its CPU defaults (bfloat16, compiled); ``--dtype float32 --eager``
compares like for like with HFEngine's float32.

``--task N`` runs the demo task instead: N test problems, one at a time, large-only and GlimpRouter
(fused) on each engine, with ``configs/demo-vllm.yaml``'s models and settings (the demo large model
and the head-size-32 small model ``demo:small-h32``, τ on the top-20 scale; seed 0). It prints
accuracy and mean / p95 latency per engine and policy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest

GREEDY = SamplingParams(temperature=0)


def build_model(root: Path) -> Path:
    """A random-init Qwen2 of ~75M parameters with the tiny pair's small tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from glimp_ray.tiny import CHATML_TEMPLATE, build_tokenizer

    tok = build_tokenizer(
        1, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], "<|im_end|>", None, CHATML_TEMPLATE
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=768,
        intermediate_size=1536,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # keep greedy decoding from ending at once on a random EOS
        model.lm_head.weight[tok.all_special_ids] = 0
    path = root / "qwen2-75m"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    print(f"model: random-init Qwen2, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
    return path


def request(i: int, tokens: int) -> StepRequest:
    messages = ({"role": "user", "content": f"Question {i}: what is {i} times {i + 7}? Think step by step."},)
    return StepRequest(f"s{i}-{time.monotonic_ns()}", messages, generate=GenerateSpec(tokens, (), GREEDY))


async def measure(engine: Any, tokens: int, concurrency: int) -> dict[str, float]:
    await engine.step(request(-1, 4))  # warm-up
    start = time.perf_counter()
    one = await engine.step(request(0, tokens))
    single = one.generated_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.step(request(i, tokens)) for i in range(1, concurrency + 1)))
    concurrent = sum(r.generated_tokens for r in results) / (time.perf_counter() - start)
    glimpses = []
    for i in range(5):
        t0 = time.perf_counter()
        await engine.step(
            StepRequest(f"g{i}-{time.monotonic_ns()}", request(i, 1).messages, glimpse=GlimpseSpec("topk", 20))
        )
        glimpses.append(time.perf_counter() - t0)
    return {"single": single, "concurrent": concurrent, "glimpse_ms": 1e3 * statistics.median(glimpses)}


async def main_async(model: str, tokens: int, concurrency: int, dtype: str, eager: bool) -> None:
    from glimp_ray.engine.hf import HFEngine
    from glimp_ray.engine.vllm import VLLMEngine

    figures = {}
    hf = HFEngine.load(model)
    figures["HFEngine"] = await measure(hf, tokens, concurrency)
    hf.close()
    vllm = VLLMEngine.load(model, dtype=dtype, enforce_eager=eager, max_model_len=1024, max_num_seqs=concurrency)
    figures["VLLMEngine"] = await measure(vllm, tokens, concurrency)
    vllm.close()
    print(f"{tokens} new tokens per request, greedy; {concurrency} concurrent; vLLM dtype {dtype}, eager {eager}")
    print(f"{'engine':<12} {'1 request tok/s':>16} {f'{concurrency} concurrent tok/s':>22} {'glimpse ms':>11}")
    for name, f in figures.items():
        print(f"{name:<12} {f['single']:>16.1f} {f['concurrent']:>22.1f} {f['glimpse_ms']:>11.1f}")
    h, v = figures["HFEngine"], figures["VLLMEngine"]
    single, together = v["single"] / h["single"], v["concurrent"] / h["concurrent"]
    print(f"vLLM / HF: 1 request {single:.2f}x, {concurrency} concurrent {together:.2f}x")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def task_async(n: int, config_path: Path) -> None:
    """GlimpRouter vs large-only on the demo task, on HFEngine and on VLLMEngine."""
    import dataclasses

    import yaml

    from glimp_ray.collab import Collaborator
    from glimp_ray.config import parse_config
    from glimp_ray.demo.task import make_split, verify

    args = yaml.safe_load(config_path.read_text())["applications"][0]["args"]
    core = {k: v for k, v in args.items() if k != "serving"}
    problems = make_split("test", n)
    rows = []
    for engine in ("hf", "vllm"):
        models = {}
        for which in ("small", "large"):
            fields = dict(core[which], engine=engine)
            if engine == "hf":
                fields = {k: v for k, v in fields.items() if k in ("model", "tokenizer", "name", "engine", "dtype")}
            models[which] = fields
        config = parse_config({**core, **models})
        params = dataclasses.replace(config.collab_params(), seed=0)
        small, large = config.small.load_engine(), config.large.load_engine()
        collab = Collaborator(small, large, params)
        await collab.run(problems[0].messages(), policy="large")  # warm-up
        for policy in ("large", "entropy"):
            latencies, correct, large_steps, steps = [], 0, 0, 0
            for problem in problems:
                result = await collab.run(problem.messages(), policy=policy)
                latencies.append(result.latency_s)
                correct += verify(result.answer, problem.answer)
                large_steps += sum(s.model == "large" for s in result.steps)
                steps += len(result.steps)
            rows.append(
                (
                    engine,
                    policy,
                    correct / n,
                    statistics.mean(latencies),
                    percentile(latencies, 0.95),
                    large_steps / steps,
                )
            )
        small.close()
        large.close()
    print(f"demo task: {n} test problems, one at a time; {config_path.name} (τ {params.threshold}, {params.entropy})")
    print(f"{'engine':<6} {'policy':<12} {'accuracy':>9} {'mean s':>8} {'p95 s':>8} {'large steps':>12}")
    for engine, policy, acc, mean, p95, share in rows:
        name = "GlimpRouter" if policy == "entropy" else "large-only"
        print(f"{engine:<6} {name:<12} {acc:>9.1%} {mean:>8.3f} {p95:>8.3f} {share:>12.1%}")
    for engine in ("hf", "vllm"):
        large_row, glimp_row = [r for r in rows if r[0] == engine]
        print(
            f"{engine}: GlimpRouter / large-only latency {glimp_row[3] / large_row[3]:.2f}x, "
            f"accuracy {glimp_row[2] / large_row[2]:.1%} of large-only's"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local model directory (default: the random-init ~75M Qwen2)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", help="vLLM's dtype (HFEngine runs float32 on CPU)")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (faster start)")
    parser.add_argument("--task", type=int, metavar="N", help="GlimpRouter vs large-only on N demo-task problems")
    parser.add_argument("--config", type=Path, default=Path(__file__).parent.parent / "configs" / "demo-vllm.yaml")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if args.task:
        asyncio.run(task_async(args.task, args.config))
        return
    model = args.model or str(build_model(Path(tempfile.mkdtemp(prefix="glimp-bench-engines-"))))
    asyncio.run(main_async(model, args.tokens, args.concurrency, args.dtype, args.eager))


if __name__ == "__main__":
    main()
