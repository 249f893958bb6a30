"""Profile the real pair's shapes with random weights: `glimp-ray profile` for models that cannot be
downloaded here.

Builds a Qwen2 model with the configuration of DeepSeek-R1-Distill-Qwen-1.5B and one with that of
DeepSeek-R1-Distill-Qwen-32B (the hidden sizes, layers, heads, KV heads and vocabulary of their
``config.json``), initialised at random in bf16 directly on the device, and measures each on the HF
engine exactly as ``glimp-ray profile`` does (:func:`glimp_ray.profiling.profile_engine`). Speed
depends on the shapes, not on the weights' values, so these stand for the real models' profiles on
this engine. The tokenizer is a small byte-level BPE padded with filler tokens to the model's
vocabulary, so that every id the random model samples decodes to text.

    python benchmarks/profile_qwen2_shapes.py --out configs/profiles            # on a GPU
    python benchmarks/profile_qwen2_shapes.py --tiny --out /tmp/shapes         # a CPU check of the script

Each profile is written as soon as it is measured (``<shape>-hf-<accelerator>.json``).
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

# The shapes, from the models' config.json (hidden size, MLP size, layers, query and KV heads,
# vocabulary); both untied, RoPE theta 10,000, 131,072 positions.
SHAPES = {
    "r1-distill-qwen-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936,
    ),
    "r1-distill-qwen-32b": dict(
        hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
        num_key_value_heads=8, vocab_size=152064,
    ),
}  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def padded_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    """A ChatML byte-level BPE (Qwen2's pre-tokenizer) with filler tokens up to ``vocab_size``."""
    from glimp_ray.tiny import _CORPUS, CHATML_TEMPLATE, build_tokenizer_from_corpus

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = build_tokenizer_from_corpus(_CORPUS * 4, 400, specials, "<|im_end|>", None, CHATML_TEMPLATE, qwen2_split=True)
    tok.add_tokens([f"<f{i}>" for i in range(vocab_size - len(tok))])
    return tok


def build_model(shape: dict, device: str, dtype: torch.dtype, seed: int = 0):  # type: ignore[no-untyped-def]
    """A random-initialised Qwen2ForCausalLM of ``shape``, allocated on ``device`` in ``dtype``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        **shape,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        eos_token_id=2,  # <|im_end|> in padded_tokenizer
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, from: " + ", ".join(SHAPES))
    parser.add_argument("--out", type=Path, required=True, help="directory for the profiles")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-running", type=int, default=32, help="the engine's batch size (max_running)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per generate call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a small hidden size and 2 layers: checks the script")
    args = parser.parse_args()

    from glimp_ray.engine.hf import HFEngine
    from glimp_ray.profiling import profile_engine

    args.out.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    for name in args.shapes.split(","):
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
        shape = {**SHAPES[name], **(TINY if args.tiny else {})}
        started = time.monotonic()
        tok = padded_tokenizer(shape["vocab_size"])
        model = build_model(shape, args.device, dtype)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{name}: {params / 1e9:.2f}B parameters on {args.device} in {dtype} ({time.monotonic() - started:.1f} s)"
        )
        engine = HFEngine(model, tok, name=name, max_running=args.max_running)
        try:
            notes = {
                "weights": "random init (speed depends on the shapes, not the values), in the shape of config.json",
                "shape": shape,
                "parameters": params,
                "script": "benchmarks/profile_qwen2_shapes.py" + (" --tiny" if args.tiny else ""),
            }
            if args.device.startswith("cuda"):
                notes["torch"] = torch.__version__
                notes["cuda"] = torch.version.cuda
            profile = profile_engine(engine, name, None, args.tokens, args.repeats, notes)
        finally:
            engine.close()
        accelerator = (
            profile.accelerator.split(":")[0].lower()
            if profile.accelerator.startswith("cpu")
            else profile.accelerator.lower()
        )
        path = args.out / f"{name}{'-tiny' if args.tiny else ''}-hf-{accelerator}.json"
        profile.save(path)
        curve = ", ".join(f"{b}: {s * 1000:.2f}" for b, s in sorted(profile.decode_s.items()))
        print(
            f"{path}: ms/token by concurrency {{{curve}}}; prefill {profile.prefill_s_per_token * 1e6:.1f} us/token; "
            f"glimpse {profile.glimpse_s * 1000:.2f} ms; KV {profile.kv_bytes_per_token} B/token, "
            f"budget {profile.kv_budget_bytes / 2**30:.1f} GiB; {profile.notes['seconds']} s",
            flush=True,
        )
        del engine, model
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
