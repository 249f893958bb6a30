"""Text ↔ tokens for the engine: prompt rendering and exact token text boundaries."""

from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

from glimp_ray.engine.base import InvalidRequestError, PromptTooLongError
from glimp_ray.tools import with_tool_prompt
from glimp_ray.types import StepRequest


def render_prompt(tokenizer: Any, request: StepRequest, think_start: str, think_end: str) -> tuple[str, bool]:
    """The full text this model should see; returns ``(text, rendered_by_template)``.

    The model's own chat template renders the messages and the request's tools (the two pools
    may use different templates; one that renders no tools gets them in the system message, in
    the words of Qwen3's template). The think-start marker is added unless the template already ends with
    it; with ``close_thinking`` the model's own think-end marker closes the thinking.
    """
    if request.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequestError("this model has no chat template; send a raw prompt instead")
        messages = [dict(m) for m in request.messages]
        tools = list(request.tools) if request.tools else None
        if tools and "tools" not in tokenizer.chat_template:
            # A template that renders no tools: the tools in the words Qwen3's template uses.
            messages, tools = with_tool_prompt(messages, tools), None
        base = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        templated = True
    else:
        assert request.prompt is not None
        base, templated = request.prompt, False
    if think_start and not base.rstrip().endswith(think_start):
        base += think_start + "\n"
    text = base + request.transcript
    if request.close_thinking and think_end:
        text += think_end + "\n\n"
    return text, templated


def decode_with_ends(tokenizer: Any, token_ids: list[int]) -> tuple[str, list[int]]:
    """Decode ``token_ids`` and give, per token, the length of text the prefix covers.

    Where a token does not decode on its own (a partial UTF-8 character), its end is
    moved forward to the next token that completes valid text, so a prefix match can
    never keep a token whose text diverged.
    """
    kwargs = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    text = tokenizer.decode(token_ids, **kwargs)
    pieces = tokenizer.batch_decode([[t] for t in token_ids], **kwargs)
    if "".join(pieces) == text:
        return text, list(accumulate(len(p) for p in pieces))
    ends: list[int | None] = []
    for k in range(1, len(token_ids) + 1):
        prefix = tokenizer.decode(token_ids[:k], **kwargs)
        ends.append(len(prefix) if text.startswith(prefix) and "\ufffd" not in prefix[-1:] else None)
    ends[-1] = len(text)
    resolved: list[int] = []
    next_end = len(text)
    for end in reversed(ends):
        next_end = end if end is not None else next_end
        resolved.append(next_end)
    resolved.reverse()
    # Keep ends non-decreasing even if a decoder produced an odd prefix.
    for i in range(len(resolved) - 2, -1, -1):
        resolved[i] = min(resolved[i], resolved[i + 1])
    return text, resolved


def request_chars(request: StepRequest) -> int:
    """Characters of a request's text (prompt or message contents, tools as JSON, and transcript)."""
    chars = len(request.prompt or "") + sum(len(str(m.get("content", ""))) for m in request.messages or ())
    tools = sum(len(json.dumps(tool)) for tool in request.tools or ())
    return chars + tools + len(request.transcript)


def refuse_text_longer_than(request: StepRequest, max_chars: int, name: str, max_context: int) -> None:
    """Raise :class:`PromptTooLongError` for a text that cannot fit whatever its tokenization:
    ``max_chars`` is the context times the longest vocabulary entry. Cheap: nothing is rendered
    or tokenized."""
    chars = request_chars(request)
    if chars > max_chars:
        raise PromptTooLongError(
            f"prompt and transcript are {chars} characters; {name} has a context of "
            f"{max_context} tokens (at most {max_chars} characters)"
        )


def sync_session(tokenizer: Any, session: Any, text: str, templated: bool) -> None:
    """Make ``session`` (a :class:`~glimp_ray.engine.session.Session`) hold the tokens of
    ``text``: the tokens whose text still matches are kept (the engine's own generated tokens are
    never re-tokenized), and only the text after them is tokenized."""
    kept = session.match(text)
    new_text = text[len(session.text) :]
    if new_text:
        ids = tokenizer.encode(new_text, add_special_tokens=kept == 0 and not templated)
        session.append(ids, new_text, [len(new_text)] * len(ids))
