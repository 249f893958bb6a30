"""Tiny random-init model pairs, built locally (no hub), for tests, benchmarks and smoke runs.

The two models deliberately differ the way real pairs do: different tokenizers
(byte-level BPE of different vocabularies), different chat templates and different
architectures and sizes.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Let me think step by step about this problem.",
    "So the answer is 42, because 6 times 7 is 42.",
    "Wait, I should check the sum again: 3 + 4 = 7.",
    "First, compute the product. Then add the remainder.",
    "Therefore x = 12 and y = 5, so x + y = 17.",
    "Hmm, that does not look right. Let me recount the digits 0 1 2 3 4 5 6 7 8 9.",
    "The user asks a question about numbers and words.",
]

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
DEEPSEEK_TEMPLATE = (
    "<|begin|>{% for m in messages %}{% if m['role'] == 'user' %}<|User|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|Assistant|>{{ m['content'] }}<|end|>"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>{% endif %}"
)


def _byte_of(char: str) -> int:
    """Inverse of GPT-2's byte-to-unicode map used by byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    if ord(char) in printable:
        return ord(char)
    others = [b for b in range(256) if b not in printable]
    return others[ord(char) - 256]


def build_tokenizer(vocab_size: int, specials: list[str], eos: str, bos: str | None, template: str):  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer trained on the fixed tiny corpus, wrapped for transformers."""
    return build_tokenizer_from_corpus(_CORPUS * 4, vocab_size, specials, eos, bos, template)


# Qwen2's pre-tokenizer (digits split one by one). transformers 5 rebuilds a Qwen2 model's
# tokenizer with it whatever tokenizer.json says, so a tokenizer trained for a Qwen2 model
# must use it too, or training and serving tokenize differently.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer_from_corpus(  # type: ignore[no-untyped-def]
    corpus: list[str],
    vocab_size: int,
    specials: list[str],
    eos: str,
    bos: str | None,
    template: str,
    qwen2_split: bool = False,
):
    """A byte-level BPE tokenizer (ASCII alphabet) trained on ``corpus``, for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    if qwen2_split:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        # ASCII bytes only: every token then decodes to valid text on its own, so random
        # weights cannot emit half a UTF-8 character (non-ASCII input is dropped).
        initial_alphabet=[c for c in pre_tokenizers.ByteLevel.alphabet() if _byte_of(c) < 128],
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, bos_token=bos, pad_token=specials[0])
    hf.chat_template = template
    return hf


def build_tiny_pair(root: str | Path, seed: int = 0, head_dim: int | None = None) -> tuple[Path, Path]:
    """Write a small (Qwen2, ChatML, character-level) and a large (Llama, DeepSeek-style,
    BPE) model under ``root``; returns their directories. ``head_dim`` (e.g. 32, the smallest
    vLLM's CPU attention runs) widens both models to that attention head size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    root = Path(root)
    small_dir, large_dir = root / "small", root / "large"

    # The small tokenizer is character-level (no merges), so text round-trips to the same
    # tokens; the large one merges, as real BPE vocabularies do.
    small_tok = build_tokenizer(
        1,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        "<|im_end|>",
        None,
        CHATML_TEMPLATE,
    )
    large_tok = build_tokenizer(
        400,
        ["<|pad|>", "<|begin|>", "<|end|>", "<|User|>", "<|Assistant|>", "<think>", "</think>"],
        "<|end|>",
        "<|begin|>",
        DEEPSEEK_TEMPLATE,
    )
    torch.manual_seed(seed)
    small_hidden, large_hidden = (32, 64) if head_dim is None else (4 * head_dim, 4 * head_dim)
    small = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(small_tok),
            hidden_size=small_hidden,
            intermediate_size=2 * small_hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            initializer_range=0.4,
            tie_word_embeddings=False,
            eos_token_id=small_tok.eos_token_id,
            pad_token_id=small_tok.pad_token_id,
        )
    )
    large = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(large_tok),
            hidden_size=large_hidden,
            intermediate_size=2 * large_hidden,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            initializer_range=0.4,
            tie_word_embeddings=False,
            eos_token_id=large_tok.eos_token_id,
            bos_token_id=large_tok.bos_token_id,
            pad_token_id=large_tok.pad_token_id,
        )
    )
    for model, tok, path in ((small, small_tok, small_dir), (large, large_tok, large_dir)):
        # Zero logits for special tokens keep greedy decoding from ending at once on a
        # random EOS or </think>, so tests get multi-step reasoning; sampling still can.
        with torch.no_grad():
            model.lm_head.weight[tok.all_special_ids + tok.convert_tokens_to_ids(["<think>", "</think>"])] = 0
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return small_dir, large_dir


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "tiny-models"
    for path in build_tiny_pair(target):
        print(path)
