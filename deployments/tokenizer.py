"""The served model's tokenizer at the router: token-id prompts, and vLLM's ``/tokenize``,
``/detokenize`` and ``/tokenizer_info`` (which lm-eval's ``local-completions`` looks for).

The served model is the pair's large model: token ids are in its vocabulary. Each pool still
renders and tokenizes the text itself (the two models' tokenizers may differ). The tokenizer is
loaded the first time it is needed, in a worker thread, so a router that never sees token ids
never loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from glimp_ray.config import ModelConfig

T = TypeVar("T")

# tokenizer_config.json entries /tokenizer_info passes on (vLLM passes the whole file; these are
# the ones clients read).
_INFO_FIELDS = ("bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token", "add_eos_token")


async def _off_loop(work: Callable[[], T]) -> T:
    """Tokenizer work on a worker thread: a long text must not stall the router's other requests."""
    return await anyio.to_thread.run_sync(work)


class ServedTokenizer:
    def __init__(self, model: ModelConfig):
        self.model = model
        self._loaded: Any = None
        self._max_model_len: int | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        """The tokenizer, loaded on first use."""
        async with self._lock:
            if self._loaded is None:
                self._loaded, self._max_model_len = await anyio.to_thread.run_sync(self._load)
        return self._loaded

    def _load(self) -> tuple[Any, int]:
        from transformers import AutoConfig, AutoTokenizer

        source = self.model.tokenizer or self.model.model
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.model.trust_remote_code)
        config = AutoConfig.from_pretrained(self.model.model, trust_remote_code=self.model.trust_remote_code)
        length = getattr(config, "max_position_embeddings", None)
        if not isinstance(length, int) or length <= 0:
            length = tokenizer.model_max_length
        if self.model.max_model_len is not None:
            length = min(length, self.model.max_model_len)
        return tokenizer, int(length)

    async def max_model_len(self) -> int:
        await self.get()
        assert self._max_model_len is not None
        return self._max_model_len

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        tokenizer = await self.get()
        return await _off_loop(lambda: list(tokenizer.encode(text, add_special_tokens=add_special_tokens)))

    async def tokenize_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool, continue_final_message: bool
    ) -> list[int]:
        """The chat template's rendering of ``messages``, tokenized (raises ValueError without a template)."""
        tokenizer = await self.get()
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the served model has no chat template; tokenize a prompt instead")

        def render() -> list[int]:
            text = tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
            )
            return list(tokenizer.encode(text, add_special_tokens=False))

        return await _off_loop(render)

    async def token_strs(self, ids: list[int]) -> list[str]:
        tokenizer = await self.get()
        return await _off_loop(lambda: list(tokenizer.convert_ids_to_tokens(ids)))

    async def detokenize(self, ids: list[int]) -> str:
        """The text of ``ids`` (special tokens kept); raises ValueError for an id outside the vocabulary."""
        tokenizer = await self.get()

        def decode() -> str:
            size = len(tokenizer)
            bad = next((t for t in ids if not 0 <= t < size), None)
            if bad is not None:
                raise ValueError(f"token id {bad} is outside the vocabulary (0 to {size - 1})")
            return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

        return await _off_loop(decode)

    async def info(self) -> dict[str, Any]:
        """vLLM's ``/tokenizer_info``: the tokenizer's class, special tokens, chat template and length."""
        tokenizer = await self.get()
        info: dict[str, Any] = {"tokenizer_class": type(tokenizer).__name__}
        for field in _INFO_FIELDS:
            value = getattr(tokenizer, field, None)
            if value is not None:
                info[field] = str(value) if not isinstance(value, bool) else value
        info["chat_template"] = getattr(tokenizer, "chat_template", None)
        info["model_max_length"] = await self.max_model_len()
        return info
