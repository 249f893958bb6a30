"""``glimp-ray eval``: the whole evaluation, from threshold selection to the reports.

1. τ candidates are quantiles of the small model's glimpse entropies on the validation
   set; each is run there and the one with the fewest large steps that keeps 95% of
   large-only accuracy is chosen (never looking at the test set).
2. On the test set: small-only, large-only, GlimpRouter at the chosen τ (and at any
   ``--thresholds``), and random routing at GlimpRouter's large-step fraction.
3. For the demo task, the AUROC of first-token entropy as a predictor of the small
   model's wrong steps.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from glimp_ray.collab import Collaborator
from glimp_ray.eval.datasets import load_dataset
from glimp_ray.eval.harness import RunSummary, evaluate, select_threshold, step_error_auroc
from glimp_ray.eval.metrics import quantile_threshold
from glimp_ray.eval.report import markdown_table, write_reports

CANDIDATE_LARGE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_eval(
    collab: Collaborator,
    dataset: str,
    out: Path,
    policies: list[str],
    thresholds: list[float] | None = None,
    limit: int | None = None,
    validation: str | None = None,
    validation_limit: int | None = None,
) -> tuple[list[RunSummary], dict[str, Any]]:
    test = load_dataset(dataset, "test", limit)
    extra: dict[str, Any] = {"dataset": test.name, "examples": len(test.examples)}
    runs: list[RunSummary] = []
    chosen_tau: float | None = None

    if validation not in (None, "demo") and Path(validation).resolve() == Path(dataset).resolve():
        raise ValueError("the validation set must not be the test set")
    if "entropy" in policies and validation is not None:
        val = load_dataset(validation, "validation", validation_limit)
        _log(f"validation: {len(val.examples)} examples for τ selection")
        small_val, _ = await evaluate(collab, val, "small", label="small (val)", progress=_log)
        large_val, _ = await evaluate(collab, val, "large", label="large (val)", progress=_log)
        candidates = []
        for fraction in CANDIDATE_LARGE_FRACTIONS:
            tau = quantile_threshold(small_val.entropies, fraction)
            run, _ = await evaluate(collab, val, "entropy", threshold=tau, label=f"τ={tau:.3f} (val)", progress=_log)
            _log(f"  val τ={tau:.4f}: accuracy {run.accuracy:.3f}, large steps {run.large_step_fraction:.3f}")
            candidates.append(run)
        best = select_threshold(candidates, large_val)
        chosen_tau = best.threshold
        extra["validation"] = {
            "examples": len(val.examples),
            "small_accuracy": small_val.accuracy,
            "large_accuracy": large_val.accuracy,
            "chosen_threshold": chosen_tau,
            "candidates": [c.to_dict() for c in candidates],
        }
        _log(f"chosen τ = {chosen_tau:.4f} on validation")

    if "small" in policies:
        runs.append((await evaluate(collab, test, "small", label="small-only", progress=_log))[0])
    if "large" in policies:
        runs.append((await evaluate(collab, test, "large", label="large-only", progress=_log))[0])
    glimp: RunSummary | None = None
    if "entropy" in policies:
        taus = sorted(set(thresholds or []) | ({chosen_tau} if chosen_tau is not None else set()))
        if not taus:
            taus = [collab.params.threshold]
        for tau in taus:
            label = f"GlimpRouter τ={tau:.3f}" + (" (chosen on val)" if tau == chosen_tau else "")
            run = (await evaluate(collab, test, "entropy", threshold=tau, label=label, progress=_log))[0]
            runs.append(run)
            if tau == chosen_tau or (chosen_tau is None and glimp is None):
                glimp = run
    if "random" in policies:
        p = glimp.large_step_fraction if glimp is not None else collab.params.random_p
        label = f"random p={p:.3f}" + (" (matched)" if glimp is not None else "")
        runs.append((await evaluate(collab, test, "random", random_p=p, label=label, progress=_log))[0])

    if any(e.gold_steps for e in test.examples):
        extra["entropy_auroc"] = await step_error_auroc(
            collab, test.examples, collab.params.entropy, collab.params.top_k
        )
    paths = write_reports(out, runs, extra, f"{test.name}: accuracy vs latency")
    print(markdown_table(runs))
    for key, value in extra.items():
        if key != "validation":
            print(f"{key}: {value}")
    if chosen_tau is not None:
        print(f"τ chosen on validation: {chosen_tau:.4f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return runs, extra
