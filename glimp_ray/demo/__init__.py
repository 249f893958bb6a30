"""The demo: a synthetic step-by-step reasoning task with verifiable answers (issue 3)."""
