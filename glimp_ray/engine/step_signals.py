"""The signals the post-step policies read, computed by the HF engine in the forwards it already
runs: per generated token, the untempered distribution's entropy and the sampled token's
log-probability (:class:`~glimp_ray.types.StepSignals` aggregates them), and a glimpse's probe
(the total probability of some strings' first tokens: ``verify``'s "yes")."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

import torch

from glimp_ray.engine.sequence import Sequence


def token_signals(logits: torch.Tensor, tokens: Seq[int]) -> tuple[list[float], list[float]]:
    """For each row of raw ``logits`` (``[rows, vocab]``): its entropy (nats, over the finite
    logits: a ``-inf`` one adds nothing) and the log-probability of ``tokens[row]``, in float32.
    Few torch ops: on a small model they run every decode turn beside a short forward."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    entropy = torch.special.entr(log_probs.exp()).sum(dim=-1)  # entr(0) = 0, entr(NaN) = NaN
    chosen = log_probs[torch.arange(len(tokens), device=logits.device), list(tokens)]
    both: list[list[float]] = torch.stack((entropy, chosen)).tolist()
    return both[0], both[1]


def record_token_signals(seqs: Seq[Sequence], tokens: Seq[int | None]) -> None:
    """Append each sampled token's signals to the sequences that asked for them (one batched
    computation over their rows)."""
    rows = [
        (seq, token)
        for seq, token in zip(seqs, tokens, strict=True)
        if token is not None and seq.request.generate is not None and seq.request.generate.signals
    ]
    if not rows:
        return
    entropies, logprobs = token_signals(torch.stack([seq.logits for seq, _ in rows]), [t for _, t in rows])
    for (seq, _), entropy, logprob in zip(rows, entropies, logprobs, strict=True):
        seq.token_entropies.append(entropy)
        seq.token_logprobs.append(logprob)


def probe_ids(tokenizer: Any, probe: Seq[str]) -> list[int]:
    """The distinct first token ids of the ``probe`` strings (no special tokens added)."""
    ids: list[int] = []
    for text in probe:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if encoded and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    return ids


def probe_prob(logits: torch.Tensor, ids: Seq[int]) -> float:
    """The total probability of ``ids`` under raw ``logits`` (``[vocab]``), in float64."""
    if not ids:
        return 0.0
    probs = torch.softmax(logits.double(), dim=-1)
    return float(probs[torch.tensor(list(ids), device=logits.device)].sum())
