"""Evaluation: accuracy against latency for every routing policy (the paper's Table 1)."""
