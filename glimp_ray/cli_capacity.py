"""The capacity subcommands of ``glimp-ray``: ``calibrate``, ``plan`` and ``profile`` (their
arguments are declared with the others in :mod:`glimp_ray.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def calibrate_command(args: argparse.Namespace) -> int:
    from glimp_ray.planner import calibrate, requests_from_spans
    from glimp_ray.tracing import read_spans

    requests = requests_from_spans(spans(args.traces, read_spans))
    validation = requests_from_spans(spans(args.validation, read_spans)) if args.validation else None
    report = calibrate(requests, args.target_large_fraction, validation, args.policy)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if report["policy"] == "entropy":
        print(f"τ = {report['threshold']:.4f} (from {report['steps']} traced glimpses)")
    else:
        print(f"{report['policy']} τ = {report['threshold']:.4f} (from {report['steps']} traced steps)")
    print(
        f"predicted large-step fraction: {report['predicted_large_fraction']:.3f} "
        f"(target {report['target_large_fraction']:.3f})"
    )
    if validation is not None:
        v = report["validation"]
        at_tau = v["large_fraction_at_threshold"]
        at_tau_text = f"{at_tau:.3f}" if at_tau is not None else f"unknown (no {report['policy']} values)"
        print(
            f"validation trace: {v['steps']} glimpses; at τ the large fraction is {at_tau_text}; "
            f"as recorded it was {v['observed_large_fraction']:.3f}"
        )
    return 0


def plan_command(args: argparse.Namespace) -> int:
    from glimp_ray.plan_report import format_placements, format_plan, plot_plan
    from glimp_ray.plan_sim import simulator
    from glimp_ray.planner import plan, requests_from_spans, skip_first
    from glimp_ray.profile import EngineProfile
    from glimp_ray.tracing import read_spans

    requests = requests_from_spans(spans(args.traces, read_spans))
    if args.skip_first:
        requests = skip_first(requests, args.skip_first)
    confirmer = None if args.no_simulate else simulator(args.sim_requests, args.seed)
    overhead = args.overhead_ms / 1000 if args.overhead_ms is not None else None
    if args.gpus:
        from glimp_ray.placement import load_gpus, plan_placements, pool_options

        if args.slo_p95 is None:
            raise ValueError("--gpus needs --slo-p95: placements are compared at one objective")
        if args.small_profile or args.large_profile:
            raise ValueError("with --gpus the profiles come from the gpus file, not --small/--large-profile")
        gpus, base = load_gpus(args.gpus)
        options = pool_options(gpus, base, args.gpus)
        report = plan_placements(requests, args.rps, args.slo_p95, options, args.threshold, overhead, confirmer)
        text = format_placements(report)
    else:
        paths = {"small": args.small_profile, "large": args.large_profile}
        profiles = {pool: EngineProfile.load(path) for pool, path in paths.items() if path}
        report = plan(
            requests,
            args.rps,
            args.threshold,
            args.slo_p95,
            latency_slack=args.latency_slack,
            max_concurrency=args.max_concurrency,
            latency_target_s=args.latency_target_ms / 1000 if args.latency_target_ms else None,
            profiles=profiles,
            overhead_s=overhead,
            confirmer=confirmer,
        )
        text = format_plan(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(report, indent=2))
        plot_plan(report, str(out / "plan.png"))
    print(json.dumps(report, indent=2) if args.json else text)
    if args.out and not args.json:
        print(f"wrote {Path(args.out) / 'plan.json'}, {Path(args.out) / 'plan.png'}")
    return 0


def spans(path: str, read: Any) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        raise ValueError(f"trace file not found: {path}")
    return read(path)  # type: ignore[no-any-return]


def profile_command(args: argparse.Namespace) -> int:
    from glimp_ray.profiling import pool_model, profile_pool

    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be >= 1")
    if args.tokens < 2:
        raise ValueError("--tokens must be >= 2")
    model = pool_model(args.config, args.pool)
    profile = profile_pool(model, args.max_concurrency, args.tokens)
    if args.out:
        profile.save(args.out)
        curve = ", ".join(f"{b}: {s * 1000:.2f}" for b, s in sorted(profile.decode_s.items()))
        print(f"{args.out}: {profile.model} on {profile.accelerator}, ms/token by concurrency {{{curve}}}")
    else:
        print(json.dumps(profile.to_dict(), indent=2))
    return 0
