"""Train the demo pair on the synthetic task (CPU, deterministic seeds).

    python -m glimp_ray.demo.train --out glimp_ray/demo/models    # ~35 min on 2 CPU cores

Both models share one byte-level BPE tokenizer trained on the task's text and a ChatML
template whose generation prompt opens the thinking section. The loss covers only the
assistant's part (thinking, answer and the end token).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glimp_ray.demo.task import Problem, make_split
from glimp_ray.tiny import CHATML_TEMPLATE, build_tokenizer_from_corpus

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
SIZES: dict[str, dict[str, Any]] = {
    "small": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "large": {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 6, "num_attention_heads": 6},
}


def render(tokenizer: Any, problem: Problem) -> tuple[str, str]:
    """(prompt, completion) as the engine will see them."""
    prompt = tokenizer.apply_chat_template(problem.messages(), tokenize=False, add_generation_prompt=True)
    completion = f"{problem.thinking()}</think>\n\n{problem.final_answer()}<|im_end|>"
    return prompt, completion


def build_tokenizer(train: list[Problem]) -> Any:
    corpus = []
    for p in train[:5000]:
        corpus += [p.question, p.thinking(), p.final_answer()]
    return build_tokenizer_from_corpus(corpus, 400, SPECIALS, "<|im_end|>", None, CHATML_TEMPLATE, qwen2_split=True)


def check_round_trip(tokenizer: Any, path: Path, texts: list[str]) -> None:
    """The tokenizer as served (reloaded next to a Qwen2 config) must tokenize as in training."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(path)
    for text in texts:
        if reloaded.encode(text, add_special_tokens=False) != tokenizer.encode(text, add_special_tokens=False):
            raise RuntimeError(f"{path}: the saved tokenizer tokenizes differently: {text[:60]!r}")


def encode(tokenizer: Any, problems: list[Problem]) -> list[tuple[list[int], int]]:
    """Token ids per example and where the completion starts."""
    out = []
    for problem in problems:
        prompt, completion = render(tokenizer, problem)
        p_ids = tokenizer.encode(prompt, add_special_tokens=False)
        c_ids = tokenizer.encode(completion, add_special_tokens=False)
        out.append((p_ids + c_ids, len(p_ids)))
    return out


def train_model(
    size: str,
    tokenizer: Any,
    data: list[tuple[list[int], int]],
    steps: int,
    seed: int,
    threads: int = 1,
    checkpoint: Callable[[Any, int], None] | None = None,
    every: int = 500,
) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    # The small model trains on one thread: at this size the outcome is sensitive to the
    # reduction order (a two-thread run of the same recipe had not yet learned addition).
    torch.set_num_threads(1 if size == "small" else threads)
    # Denormal floats late in training can make CPU kernels many times slower.
    torch.set_flush_denormal(True)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=False,
        num_key_value_heads=SIZES[size]["num_attention_heads"],
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SIZES[size],
    )
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3 if size == "small" else 1e-3, weight_decay=0.01)
    rng = random.Random(seed)
    batch_size, warmup = 32, max(1, steps // 20)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        lr_scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * lr_scale
        batch = rng.sample(data, batch_size)
        length = max(len(ids) for ids, _ in batch)
        inputs = torch.full((batch_size, length), tokenizer.pad_token_id)
        labels = torch.full((batch_size, length), -100)
        mask = torch.zeros((batch_size, length), dtype=torch.long)
        for row, (ids, prompt_len) in enumerate(batch):
            inputs[row, : len(ids)] = torch.tensor(ids)
            labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            mask[row, : len(ids)] = 1
        loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"{size} step {step:5d} loss {loss.item():.4f} {time.perf_counter() - start:7.1f}s",
                flush=True,
            )
        if checkpoint is not None and step and step % every == 0:
            model.eval()
            checkpoint(model, step)  # so a long run can be evaluated before it ends
            model.train()
    model.eval()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-models", help="directory for small/ and large/")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--small-steps", type=int, default=2501)
    parser.add_argument("--large-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["small", "large"], help="train one model only")
    parser.add_argument("--keep-checkpoints", action="store_true", help="save each checkpoint apart")
    parser.add_argument("--small-hidden", type=int, default=SIZES["small"]["hidden_size"])
    parser.add_argument("--small-layers", type=int, default=SIZES["small"]["num_hidden_layers"])
    # vLLM's CPU attention needs a head size of at least 32: `--small-heads 2` gives the
    # small model that the vLLM demo serves (glimp_ray/demo/models/small-h32).
    parser.add_argument("--small-heads", type=int, default=SIZES["small"]["num_attention_heads"])
    args = parser.parse_args(argv)
    if args.small_hidden % args.small_heads:
        parser.error("--small-hidden must be a multiple of --small-heads")
    SIZES["small"].update(
        hidden_size=args.small_hidden,
        intermediate_size=2 * args.small_hidden,
        num_hidden_layers=args.small_layers,
        num_attention_heads=args.small_heads,
    )

    import torch

    threads = torch.get_num_threads()
    train = make_split("train", args.train_size)
    tokenizer = build_tokenizer(train)
    data = encode(tokenizer, train)
    print(f"{len(data)} examples, vocab {len(tokenizer)}, max length {max(len(d) for d, _ in data)}")
    for size, steps in (("small", args.small_steps), ("large", args.large_steps)):
        if args.only and size != args.only:
            continue
        path = Path(args.out) / (
            size if args.small_heads == 4 or size == "large" else f"small-h{args.small_hidden // args.small_heads}"
        )

        def save(model: Any, step: int | None = None, path: Path = path) -> None:
            target = path if step is None or not args.keep_checkpoints else Path(f"{path}-{step}")
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)

        model = train_model(size, tokenizer, data, steps, args.seed, threads, save)
        save(model)
        check_round_trip(tokenizer, path, ["".join(render(tokenizer, p)) for p in train[:200]])
        params = sum(p.numel() for p in model.parameters())
        print(f"saved {path} ({params:,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
