"""``glimp-ray eval``: the whole evaluation, from threshold selection to the reports.

1. Thresholds, on the validation split, never the test split: each signal policy's candidates
   (``entropy``, ``top1``, ``margin``, and the post-step ``h_step``, ``ppl_step``, ``min_prob``)
   are quantiles of its signal over the small model's steps in a small-only run (``verify``: of
   the large model's scores in a run that never rewrites), at ``fractions`` of the steps; ``cue``
   has no threshold. Each candidate runs there, and the one
   with the fewest large steps that keeps ``keep`` of large-only accuracy is chosen (or, with
   ``target_large_fraction``, the quantile at that fraction: one candidate, run for the record). The
   random baseline runs at the large-step fraction GlimpRouter's chosen τ had on validation.
2. On the test split: every policy under every seed, interleaved (:mod:`glimp_ray.eval.seeds`);
   mean ± sd over the seeds; paired tests against large-only and against GlimpRouter.
3. Where the dataset has gold steps (the demo task), each signal's AUROC for the small model's
   wrong steps, teacher-forced.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from glimp_ray.collab import Collaborator
from glimp_ray.eval.datasets import Dataset, load_dataset
from glimp_ray.eval.harness import evaluate, run_example, select_threshold
from glimp_ray.eval.metrics import signal_threshold
from glimp_ray.eval.report import Validation, seeds_table, write_reports
from glimp_ray.eval.seeds import Arm, Comparison, arm_stats, compare, run_seeds
from glimp_ray.eval.signals import SignalRecorder, step_error_auroc
from glimp_ray.policies import SIGNAL_POLICIES, STEP_SIGNAL_POLICIES

CANDIDATE_LARGE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
POLICY_ORDER = (
    "small", "large", "entropy", "top1", "margin", "h_step", "ppl_step", "min_prob", "cue", "verify", "random",
)  # fmt: skip
# The policies whose threshold is chosen on validation, and the signal each reads.
THRESHOLD_SIGNALS: dict[str, str] = {**SIGNAL_POLICIES, **STEP_SIGNAL_POLICIES, "verify": "verify"}
NAMES = {"small": "small-only", "large": "large-only", "entropy": "GlimpRouter (entropy)"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def calibrate(
    collab: Collaborator,
    val: Dataset,
    policies: list[str],
    fractions: tuple[float, ...] = CANDIDATE_LARGE_FRACTIONS,
    target_large_fraction: float | None = None,
    keep: float = 0.95,
    seed: int | None = None,
) -> Validation:
    """Choose each signal policy's threshold on ``val`` (see the module's docstring)."""
    recorder = SignalRecorder(collab.clients["small"], step_signals=any(p in STEP_SIGNAL_POLICIES for p in policies))
    recording = Collaborator(recorder, collab.clients["large"], collab.params)
    small, _ = await evaluate(recording, val, "small", label="small-only", progress=_log, seed=seed)
    large, _ = await evaluate(collab, val, "large", label="large-only", progress=_log, seed=seed)
    checker = SignalRecorder(collab.clients["large"], step_signals=False)
    if "verify" in policies:  # the large model's scores of the small model's steps, none rewritten
        checking = Collaborator(collab.clients["small"], checker, collab.params)
        await evaluate(checking, val, "verify", -1.0, label="verify scores", progress=_log, seed=seed)
    chosen_fractions = (target_large_fraction,) if target_large_fraction is not None else fractions
    validation = Validation(small, large, chosen_fractions)
    for policy in (p for p in POLICY_ORDER if p in policies and p in THRESHOLD_SIGNALS):
        signal = THRESHOLD_SIGNALS[policy]
        values = (checker if signal == "verify" else recorder).values(signal)
        candidates = []
        for fraction in chosen_fractions:
            tau = signal_threshold(values, fraction, signal)
            run, _ = await evaluate(collab, val, policy, tau, label=f"{policy} τ={tau:.4g}", seed=seed)
            _log(f"  val {policy} τ={tau:.4g}: accuracy {run.accuracy:.3f}, large steps {run.large_step_fraction:.3f}")
            candidates.append(run)
        validation.candidates[policy] = candidates
        validation.chosen[policy] = (
            candidates[0] if target_large_fraction is not None else select_threshold(candidates, large, keep)
        )
        _log(f"chosen {policy} τ = {validation.chosen[policy].threshold:.4g} on validation")
    return validation


def make_arms(
    policies: list[str],
    validation: Validation | None,
    thresholds: list[float] | None,
    default_tau: float,
    random_p: float,
) -> list[Arm]:
    """The arms to run on test, in :data:`POLICY_ORDER`; extra ``thresholds`` are entropy's."""
    arms: list[Arm] = []
    for policy in (p for p in POLICY_ORDER if p in policies):
        if policy in THRESHOLD_SIGNALS:
            chosen = validation.chosen[policy].threshold if validation is not None else default_tau
            assert chosen is not None
            name = NAMES.get(policy, policy)
            arms.append(Arm(name, policy, chosen))
            if policy == "entropy":
                arms += [Arm(f"entropy τ={t:.4g}", "entropy", t) for t in thresholds or [] if t != chosen]
        elif policy == "random":
            matched = validation is not None and "entropy" in validation.chosen
            p = validation.chosen["entropy"].large_step_fraction if validation and matched else random_p
            arms.append(Arm("random (matched)" if matched else "random", "random", random_p=p))
        else:
            arms.append(Arm(NAMES.get(policy, policy), policy))
    return arms


async def run_eval(
    collab: Collaborator,
    dataset: str,
    out: Path,
    policies: list[str],
    thresholds: list[float] | None = None,
    limit: int | None = None,
    validation: str | None = None,
    validation_limit: int | None = None,
    seeds: int = 1,
    fractions: tuple[float, ...] = CANDIDATE_LARGE_FRACTIONS,
    target_large_fraction: float | None = None,
    keep: float = 0.95,
    command: str = "",
    prompt_template: str | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    test = load_dataset(dataset, "test", limit, prompt_template)
    if validation not in (None, "demo") and Path(validation).resolve() == Path(dataset).resolve():
        raise ValueError("the validation set must not be the test set")
    # One unrecorded request per model first: the first forwards of a process are slow.
    for policy in ("small", "large"):
        await run_example(collab, test.examples[0], test.check, policy, seed=0)
    base = collab.params.seed or 0
    seed_list = list(range(base, base + seeds))
    chosen: Validation | None = None
    if validation is not None and any(p in THRESHOLD_SIGNALS for p in policies):
        val = load_dataset(validation, "validation", validation_limit, prompt_template)
        _log(f"validation: {len(val.examples)} examples for threshold selection")
        chosen = await calibrate(collab, val, policies, fractions, target_large_fraction, keep, seed_list[0])
    arms = make_arms(policies, chosen, thresholds, collab.params.threshold, collab.params.random_p)
    _log(f"test: {len(test.examples)} examples × {len(arms)} policies × {seeds} seeds")
    outcomes = await run_seeds(collab, test, arms, seed_list, progress=_log)
    stats = arm_stats(outcomes, arms, test.name)
    labels = [a.label for a in arms]
    references = [r for r in ("large-only", NAMES["entropy"]) if r in labels]
    comparisons: list[Comparison] = [compare(outcomes, a, ref) for ref in references for a in labels if a != ref]
    extra: dict[str, Any] = {"dataset": test.name, "examples": len(test.examples), "seeds": seed_list}
    if any(e.gold_steps for e in test.examples):
        extra["signal_auroc"] = await step_error_auroc(
            collab, test.examples, collab.params.entropy, collab.params.top_k
        )
    extra["wall_s"] = time.perf_counter() - started
    extra["outcomes"] = {
        label: {str(s): [o.to_dict() for o in runs] for s, runs in by_seed.items()}
        for label, by_seed in outcomes.items()
    }
    setup = _setup(collab, test, chosen, seed_list, extra["wall_s"], command)
    paths = write_reports(out, stats, comparisons, extra, f"{test.name}: every policy over seeds", chosen, setup)
    print(seeds_table(stats))
    print(f"wall time {extra['wall_s']:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return extra


def _setup(
    collab: Collaborator, test: Dataset, validation: Validation | None, seeds: list[int], wall_s: float, command: str
) -> str:
    p = collab.params
    lines = [
        f"- command: `{command}`" if command else "",
        f"- wall time: {wall_s:.0f} s (threshold selection, every policy under every seed, AUROC)",
        f"- test: {len(test.examples)} problems ({test.name}); seeds {', '.join(map(str, seeds))}",
        f"- validation: {validation.small.n} problems, seed {seeds[0]}" if validation is not None else "",
        f"- sampling: temperature {p.temperature}, top-p {p.top_p}; entropy {p.entropy}"
        + (f" (top-{p.top_k})" if p.entropy == "topk" else "")
        + f"; step max {p.step_max_tokens} tokens, thinking budget {p.thinking_budget}",
        "- latency: wall-clock per request, requests one at a time, policies interleaved per problem",
    ]
    return "\n".join(line for line in lines if line)
