"""The ``glimp-ray`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glimp_ray.cli_capacity import calibrate_command, plan_command, profile_command
from glimp_ray.collab import CollabResult
from glimp_ray.config import ConfigError, GlimpConfig, RoutingConfig, load_config
from glimp_ray.engine.base import EngineError
from glimp_ray.params import PRESETS
from glimp_ray.policies import POLICY_NAMES
from glimp_ray.prompts import resolve_template

_OVERRIDES = {
    "preset": str,
    "policy": str,
    "mode": str,
    "threshold": float,
    "entropy": str,
    "top_k": int,
    "temperature": float,
    "top_p": float,
    "seed": int,
    "step_max_tokens": int,
    "thinking_budget": int,
    "answer_max_tokens": int,
    "sampling_top_k": int,
    "min_p": float,
}


_CHOICES: dict[str, tuple[str, ...]] = {"preset": PRESETS, "entropy": ("full", "topk"), "policy": POLICY_NAMES}


def _shadow_arg(text: str) -> dict[str, float]:
    """``name=τ,name=τ`` as a mapping (checked by the loop's parameters)."""
    shadow: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            shadow[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=τ, got {part!r}")
    return shadow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glimp-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="run one request in-process and print the answer and steps")
    gen.add_argument("--config", help="YAML config describing both models (default: the demo models)")
    gen.add_argument("prompt", nargs="?", help="the user's message (or the raw prompt with --raw)")
    gen.add_argument("--messages", help="JSON file holding a list of chat messages")
    gen.add_argument("--raw", action="store_true", help="send the prompt as-is, without a chat template")
    gen.add_argument("--json", action="store_true", help="print machine-readable JSON")
    for name, kind in _OVERRIDES.items():
        gen.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=None, choices=_CHOICES.get(name), help=f"override {name}"
        )
    gen.add_argument(
        "--shadow",
        type=_shadow_arg,
        default=None,
        help="shadow policies beside the acting one, name=τ,... (e.g. top1=0.5,h_step=1.2,cue=0)",
    )
    ev = commands.add_parser("eval", help="accuracy against latency for each routing policy")
    ev.add_argument("--config", help="YAML config describing both models (default: the demo models)")
    ev.add_argument("--dataset", required=True, help="'demo' or a JSONL file with problem and answer")
    ev.add_argument("--policies", default="small,large,entropy,random", help="comma-separated policies")
    ev.add_argument("--thresholds", help="comma-separated τ values to evaluate besides the chosen one")
    ev.add_argument("--limit", type=int, help="test examples (default: 300 for demo, all for JSONL)")
    ev.add_argument("--validation", help="'demo' or a JSONL file to choose τ on (default: demo for demo)")
    ev.add_argument("--validation-limit", type=int, default=200, help="validation examples")
    ev.add_argument("--out", default="eval-out", help="directory for results.md, results.json and the plot")
    ev.add_argument(
        "--prompt-template",
        help="how a problem becomes the user's message: plain (default), reference (the paper's math "
        "instruction: steps separated by blank lines, the answer in \\boxed{}), a file, or text holding {problem}",
    )
    ev.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="runs per policy, with seeds seed, seed+1, … (the config's seed, default 0)",
    )
    ev.add_argument(
        "--candidate-fractions",
        default="0.1,0.2,0.3,0.4,0.5",
        help="large fractions of the small-only steps at which each signal's threshold candidates are drawn",
    )
    ev.add_argument(
        "--target-large-fraction",
        type=float,
        help="take each signal's threshold at this large fraction instead of the accuracy rule",
    )
    ev.add_argument(
        "--keep-accuracy", type=float, default=0.95, help="share of large-only accuracy a chosen threshold keeps"
    )
    cal = commands.add_parser("calibrate", help="choose τ from a trace's step signals (glimpse entropy by default)")
    cal.add_argument("--traces", required=True, help="JSON-lines span file")
    cal.add_argument("--target-large-fraction", type=float, required=True, help="e.g. 0.25 (paper: 0.2-0.3)")
    cal.add_argument("--validation", help="a separate span file to check the ratio on")
    cal.add_argument(
        "--policy",
        default="entropy",
        choices=("entropy", "top1", "margin", "h_step", "ppl_step", "min_prob", "verify"),
        help="whose τ: its signal's quantile over the traced steps (default: entropy, GlimpRouter)",
    )
    cal.add_argument("--json", action="store_true", help="print machine-readable JSON")
    pl = commands.add_parser("plan", help="replicas per pool (and GPU types) for a target load, from traces")
    pl.add_argument("--traces", required=True, help="JSON-lines span file")
    pl.add_argument("--rps", type=float, required=True, help="target requests per second")
    pl.add_argument("--slo-p95", type=float, help="p95 latency objective in seconds")
    pl.add_argument(
        "--threshold",
        type=_threshold_list,
        action="extend",
        default=[],
        help="what-if τ: 0.5 or 0.1,0.5,1 (repeatable)",
    )
    pl.add_argument("--small-profile", help="engine profile JSON of the small pool (default: fitted from the traces)")
    pl.add_argument("--large-profile", help="engine profile JSON of the large pool (default: fitted from the traces)")
    pl.add_argument("--gpus", help="GPU types, prices and profiles (configs/gpus.example.yaml); needs --slo-p95")
    pl.add_argument("--skip-first", type=int, default=0, help="leave out the first N traced requests (warm-up)")
    pl.add_argument("--overhead-ms", type=float, help="ms per request outside the models (default: traced median)")
    pl.add_argument("--no-simulate", action="store_true", help="the analytic model only, no simulator confirmation")
    pl.add_argument("--sim-requests", type=int, default=2000, help="simulated arrivals per confirming run")
    pl.add_argument("--seed", type=int, default=0, help="the simulator's seed")
    pl.add_argument(
        "--latency-slack",
        type=float,
        default=2.0,
        help="without --slo-p95: per-token latency target as a multiple of a lone call's",
    )
    pl.add_argument("--latency-target-ms", type=float, help="per-token latency target in ms (instead of the slack)")
    pl.add_argument(
        "--max-concurrency", type=int, default=32, help="calls a replica runs at once, for curves fitted from traces"
    )
    pl.add_argument("--out", help="directory for plan.json and plan.png")
    pl.add_argument("--json", action="store_true", help="print machine-readable JSON")
    bt = commands.add_parser("batch", help="run a JSONL/Parquet dataset offline with Ray Data (resumable)")
    bt.add_argument("--config", help="YAML config of both models (default: the demo models)")
    bt.add_argument("--input", required=True, help="JSONL or Parquet with an id and a prompt or messages column")
    bt.add_argument("--output", required=True, help="directory for results-, errors- and traces-*.jsonl")
    bt.add_argument("--serve-app", help="call this running Serve application instead of loading models")
    bt.add_argument("--id-column", default="id")
    bt.add_argument("--prompt-column", default="prompt")
    bt.add_argument("--messages-column", default="messages")
    bt.add_argument("--batch-size", type=int, default=8)
    bt.add_argument(
        "--prompt-template",
        help="a prompt row's user message: plain (default), reference (the paper's math instruction), a file, or "
        "text holding {problem}",
    )
    bt.add_argument("--actors", type=int, default=1, help="Ray Data workers running the loop")
    bt.add_argument("--num-cpus", type=float, default=0.25, help="CPUs per Ray Data worker")
    bt.add_argument("--small-gpus", type=float, default=0.0, help="GPUs for the small model's actor")
    bt.add_argument("--large-gpus", type=float, default=0.0, help="GPUs for the large model's actor")
    bt.add_argument("--max-prompt-chars", type=int, default=100_000)
    bt.add_argument("--traces", help="also merge the job's spans into this one file")
    ck = commands.add_parser("check", help="preflight a Serve config against a cluster manifest (no GPU, no hub)")
    ck.add_argument("config", help="Serve config (configs/*.yaml), a RayService manifest, or an in-process config")
    ck.add_argument("--cluster", help="KubeRay RayService/RayCluster or Ray cluster launcher YAML")
    ck.add_argument("--dockerfile", help="the image's Dockerfile (default: the one beside the manifest)")
    pr = commands.add_parser("profile", help="measure one pool's engine profile here (batching curve, prefill, KV)")
    pr.add_argument("--config", required=True, help="YAML config describing both models (in-process or Serve)")
    pr.add_argument("--pool", required=True, choices=("small", "large"), help="which model to profile")
    pr.add_argument("--out", help="write the profile's JSON here (default: print it)")
    pr.add_argument("--max-concurrency", type=int, help="highest concurrency measured (default: max_running)")
    pr.add_argument("--tokens", type=int, default=64, help="tokens each measured call generates")
    sm = commands.add_parser("simulate", help="simulate the deployment: traced requests on profiled pools, at a load")
    from glimp_ray.sim.command import add_arguments as simulate_arguments

    simulate_arguments(sm)
    return parser


def _batch(args: argparse.Namespace) -> int:
    import ray

    from glimp_ray.batch_job import BatchColumns, merge_traces, run_batch

    config = _load(args.config)
    if not Path(args.input).exists():
        raise ValueError(f"input not found: {args.input}")
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)  # a running cluster
        else:
            # A local cluster with room for the engine actors, the workers and Ray Data's
            # read tasks even on a 2-core machine (the engines are mostly idle between calls).
            from deployments import serve_env

            serve_env.apply()  # for a Serve app (--serve-app) on this cluster
            ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), logging_level=logging.WARNING)
    columns = BatchColumns(
        args.id_column, args.prompt_column, args.messages_column, resolve_template(args.prompt_template)
    )
    summary = run_batch(
        config.model_dump(mode="json"),
        args.input,
        args.output,
        args.serve_app,
        columns,
        batch_size=args.batch_size,
        actors=args.actors,
        num_cpus=args.num_cpus,
        max_prompt_chars=args.max_prompt_chars,
        small_resources={"num_gpus": args.small_gpus} if args.small_gpus else None,
        large_resources={"num_gpus": args.large_gpus} if args.large_gpus else None,
    )
    if args.traces:
        summary["trace_spans"] = merge_traces(args.output, args.traces)
    print(json.dumps(summary, indent=2))
    return 0


def _threshold_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _load(path: str | None) -> GlimpConfig:
    return load_config(path) if path else GlimpConfig()


def _floats(text: str | None, flag: str = "--thresholds") -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def _eval(args: argparse.Namespace) -> int:
    from glimp_ray.eval.run import run_eval
    from glimp_ray.local import close_collaborator, load_collaborator

    config = _load(args.config)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = set(policies) - set(POLICY_NAMES)
    if unknown or not policies:
        raise ValueError(f"--policies must be drawn from {', '.join(POLICY_NAMES)}, got {args.policies!r}")
    validation = args.validation or ("demo" if args.dataset == "demo" else None)
    thresholds = _floats(args.thresholds)
    collaborator = load_collaborator(config)
    try:
        asyncio.run(
            run_eval(
                collaborator,
                args.dataset,
                Path(args.out),
                policies,
                thresholds,
                args.limit,
                validation,
                args.validation_limit,
                seeds=args.seeds,
                fractions=tuple(_floats(args.candidate_fractions, "--candidate-fractions") or ()),
                target_large_fraction=args.target_large_fraction,
                keep=args.keep_accuracy,
                command="glimp-ray " + " ".join(sys.argv[1:]),
                prompt_template=args.prompt_template,
            )
        )
    finally:
        close_collaborator(collaborator)
    return 0


def _read_messages(path: str) -> list[dict[str, str]]:
    try:
        messages = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read messages from {path}: {exc}") from None
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{path}: expected a non-empty JSON list of messages")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{path}: message {i} needs string 'role' and 'content'")
    return messages


def format_steps(result: CollabResult) -> str:
    """A per-step table: index, model, entropy, tokens, seconds, finish reason."""
    rows = [f"{'step':>4}  {'model':<5}  {'entropy':>7}  {'tokens':>6}  {'seconds':>7}  finish"]
    for s in [*result.steps, result.answer_record]:
        entropy = "-" if s.entropy is None else f"{s.entropy:.3f}"
        index = "ans" if s.index < 0 else str(s.index)
        rows.append(f"{index:>4}  {s.model:<5}  {entropy:>7}  {s.tokens:>6}  {s.latency_s:>7.3f}  {s.finish_reason}")
    rows.append(
        f"{len(result.steps)} steps, {result.large_step_fraction:.0%} large, "
        f"{result.completion_tokens} tokens, {result.latency_s:.2f} s, stopped by {result.stop_reason}"
    )
    return "\n".join(rows)


def _generate(args: argparse.Namespace) -> int:
    from glimp_ray.local import close_collaborator, load_collaborator

    config = _load(args.config)
    if args.messages and args.prompt:
        raise ValueError("give a prompt or --messages, not both")
    if args.messages:
        messages: list[dict[str, str]] | None = _read_messages(args.messages)
        prompt = None
    elif args.prompt:
        messages, prompt = (None, args.prompt) if args.raw else ([{"role": "user", "content": args.prompt}], None)
    else:
        raise ValueError("give a prompt or --messages FILE")
    overrides: dict[str, Any] = {k: getattr(args, k) for k in _OVERRIDES}
    overrides["shadow"] = args.shadow
    params = config.collab_params().replace(**overrides)  # bad overrides fail before any model loads
    refused = RoutingConfig.entropy_refused(params.entropy, config.small.engine, params.top_k)
    if refused:
        raise ValueError(f"--{'top-k' if refused.startswith('top_k') else 'entropy'}: {refused}")
    collaborator = load_collaborator(config)
    try:
        result = asyncio.run(collaborator.run(messages=messages, prompt=prompt, **overrides))
    finally:
        close_collaborator(collaborator)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.answer)
        print()
        print(format_steps(result))
    return 0


def _check(args: argparse.Namespace) -> int:
    from glimp_ray.preflight import check_path

    reports = check_path(args.config, args.cluster, args.dockerfile)
    print("\n\n".join(report.format() for report in reports))
    return 1 if any(report.errors for report in reports) else 0


def _simulate(args: argparse.Namespace) -> int:
    from glimp_ray.sim.command import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "calibrate":
            return calibrate_command(args)
        if args.command == "plan":
            return plan_command(args)
        if args.command == "batch":
            return _batch(args)
        if args.command == "check":
            return _check(args)
        if args.command == "profile":
            return profile_command(args)
        if args.command == "simulate":
            return _simulate(args)
    except (ConfigError, EngineError, ValueError) as exc:
        print(f"glimp-ray: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
