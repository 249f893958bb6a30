"""HFEngine vs VLLMEngine on one model: tokens/s for one request and for 16 concurrent ones, and
the glimpse latency (a 1-token top-20 glimpse). Runs in the vLLM virtualenv (``make setup-vllm``):

    .venv-vllm/bin/python benchmarks/bench_engines.py              # random-init ~75M Qwen2
    .venv-vllm/bin/python benchmarks/bench_engines.py --model DIR  # any local model

The default model is built locally (no hub): Qwen2 shapes, hidden 768, 12 layers (~75M
parameters), the tiny character-level tokenizer. Greedy, 64 new tokens per request, prompts through
its chat template. vLLM runs with its CPU defaults (bfloat16, compiled); ``--dtype float32 --eager``
compares like for like with HFEngine's float32.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local model directory (default: the random-init ~75M Qwen2)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", help="vLLM's dtype (HFEngine runs float32 on CPU)")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (faster start)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    model = args.model or str(build_model(Path(tempfile.mkdtemp(prefix="glimp-bench-engines-"))))
    asyncio.run(main_async(model, args.tokens, args.concurrency, args.dtype, args.eager))


if __name__ == "__main__":
    main()
