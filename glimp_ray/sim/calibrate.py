"""Pools for the simulator measured from traces of the deployment as it ran.

An isolated engine profile leaves out what the deployment adds around the engine; where that
matters (the CPU demo, whose router and replicas share a machine's cores), the simulator's pools
can be calibrated from the deployment's own traced calls instead (:func:`calibrate`):

- **ℓ(b)** per pool: each traced call's model seconds per token (its prefill folded in) against
  the mean number of calls its replica ran during it (:func:`glimp_ray.traces.with_concurrency`),
  binned by that rounded, each bin placed at its mean, token-weighted, kept non-decreasing;
- **contention** (``shared_machine``): a call's seconds per token also grow while the *other*
  pool is busy. Fitted by weighted least squares within the bins of concurrency,
  ``s = a_b + k·u`` where ``u`` is the share of the call's time the other pool ran at least one
  call; ``k`` is :class:`~glimp_ray.sim.machine.Contention`'s ``busy_s`` (at most the lone
  call's own time: a busy neighbour at most doubles it), and the curve is read off ``s − k·u``;
- **speed noise** (``shared_machine``): what the curve leaves: each call's log ratio of traced
  to predicted seconds per token. Pairs of calls (either pool) close in time share part of it:
  the covariance of their residuals against the gap between them, ``sd² · exp(−gap / τ)``,
  gives the machine's drift (:class:`~glimp_ray.sim.machine.SpeedNoise`'s ``sd`` and
  ``correlation_s``); the rest of the variance is each call's own (``call_sd``);
- the glimpse's cost: the traced mean of the glimpses' model seconds.

Which traces calibrate which simulation is the caller's choice; to check the simulator against
a run, calibrate from other runs (``benchmarks/bench_sim_vs_measured.py`` uses the neighbouring
rates').
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from glimp_ray.plan_model import POOLS, fit_curves, mean_glimpse_s, traced_profile
from glimp_ray.profile import EngineProfile
from glimp_ray.sim.machine import Contention, SpeedNoise
from glimp_ray.traces import TracedRequest

MIN_BIN_TOKENS = 50  # a bin of fewer traced tokens is not trusted
# Lags (s) at which the residuals' covariance is measured; the drift is fitted through them.
LAG_EDGES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


@dataclass(frozen=True)
class CallSample:
    """One traced call with tokens: its pool, seconds per token, concurrency and the share of its
    time the other pool was busy, its midpoint and its tokens (the weight)."""

    pool: str
    seconds_per_token: float
    concurrency: float
    other_busy: float
    mid_s: float
    tokens: int


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured: a profile per pool, and (shared machine) contention and noise."""

    profiles: dict[str, EngineProfile]
    contention: Contention | None = None
    noise: SpeedNoise | None = None


def call_samples(requests: Sequence[TracedRequest]) -> list[CallSample]:
    """Every timed call with tokens, with the other pool's busy share measured from the same traces."""
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in requests:
        for c in r.calls:
            if c.end_s is not None and c.model_s > 0:
                intervals[c.route].append((c.end_s - c.model_s, c.end_s))
    busy = {pool: _union(spans) for pool, spans in intervals.items()}
    samples = []
    for r in requests:
        for c in r.calls:
            if c.tokens <= 0 or c.model_s <= 0 or c.end_s is None or c.route not in POOLS:
                continue
            start, end = c.end_s - c.model_s, c.end_s
            other = POOLS[1 - POOLS.index(c.route)]
            share = _covered(busy.get(other, ([], [])), start, end) / (end - start)
            samples.append(CallSample(c.route, c.model_s / c.tokens, c.concurrency, share, (start + end) / 2, c.tokens))
    return samples


def _union(spans: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Disjoint sorted intervals covering ``spans`` (as starts, ends)."""
    starts: list[float] = []
    ends: list[float] = []
    for start, end in sorted(spans):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _covered(union: tuple[list[float], list[float]], start: float, end: float) -> float:
    starts, ends = union
    total = 0.0
    i = max(bisect.bisect_right(starts, start) - 1, 0)
    while i < len(starts) and starts[i] < end:
        total += max(0.0, min(end, ends[i]) - max(start, starts[i]))
        i += 1
    return total


def fit_pool(samples: Sequence[CallSample], pool: str, contention: bool) -> tuple[dict[int, float], float]:
    """(ℓ at b = 1, 2, 3, … and the seconds per token the busy other pool adds: 0 without ``contention``).

    The calls are binned by their concurrency rounded; each bin is a point at its calls' mean
    concurrency and mean seconds per token (token-weighted), the points are made non-decreasing
    (pooling adjacent violators, weighted by tokens) and the curve is read off them at whole b."""
    own = [s for s in samples if s.pool == pool]
    if not own:
        return {}, 0.0
    weights = np.asarray([s.tokens for s in own], float)
    y = np.asarray([s.seconds_per_token for s in own])
    concurrency = np.asarray([s.concurrency for s in own])
    bins = np.maximum(np.rint(concurrency), 1)
    busy_s = 0.0
    if contention:
        # Within each bin of concurrency (a level of its own, so that the curve's shape is not
        # read as contention): seconds per token against the other pool's busy share.
        other = np.asarray([s.other_busy for s in own])
        levels = np.unique(bins)
        design = np.c_[(bins[:, None] == levels[None, :]).astype(float), other]
        root = np.sqrt(weights)[:, None]
        coef = np.linalg.lstsq(design * root, y * root[:, 0], rcond=None)[0]
        busy_s = max(float(coef[-1]), 0.0)
        # A busy neighbour at most doubles a lone call's time (they share the cores): where the
        # fit says more, the busy share stands for load it does not measure (the machine's
        # other work) and is capped at the lowest bin's own time.
        lowest = bins == levels[0]
        mean = float(np.average(y[lowest], weights=weights[lowest]))
        share = float(np.average(other[lowest], weights=weights[lowest]))
        busy_s = min(busy_s, mean / (1 + share))
        y = y - busy_s * other
    points: list[list[float]] = []  # [mean b, mean seconds per token, tokens]
    for b in np.unique(bins):
        index = bins == b
        tokens = float(weights[index].sum())
        if tokens >= MIN_BIN_TOKENS:
            points.append(
                [
                    float(np.average(concurrency[index], weights=weights[index])),
                    float(np.average(y[index], weights=weights[index])),
                    tokens,
                ]
            )
    if not points:
        return {}, busy_s
    monotone = _non_decreasing(points)
    xs = [b for b, _, _ in monotone]
    ys = [max(v, 1e-6) for _, v, _ in monotone]
    top = max(1, math.ceil(xs[-1]))
    return {b: float(np.interp(b, xs, ys)) for b in range(1, top + 1)}, busy_s


def _non_decreasing(points: list[list[float]]) -> list[list[float]]:
    """Weighted pool-adjacent-violators over ``[x, y, weight]`` sorted by x: merged blocks sit at
    their weighted mean x and y."""
    blocks: list[list[float]] = []
    for x, y, w in sorted(points):
        blocks.append([x, y, w])
        while len(blocks) > 1 and blocks[-2][1] > blocks[-1][1]:
            x2, y2, w2 = blocks.pop()
            x1, y1, w1 = blocks.pop()
            blocks.append([(x1 * w1 + x2 * w2) / (w1 + w2), (y1 * w1 + y2 * w2) / (w1 + w2), w1 + w2])
    return blocks


def predict(sample: CallSample, curves: dict[str, EngineProfile], busy_s: dict[str, float]) -> float:
    return curves[sample.pool].latency(sample.concurrency) + busy_s.get(sample.pool, 0.0) * sample.other_busy


def fit_noise(samples: Sequence[CallSample], predicted: Sequence[float]) -> SpeedNoise:
    """The drift shared by calls close in time and each call's own noise (see the module docstring)."""
    residual = np.log([s.seconds_per_token / p for s, p in zip(samples, predicted, strict=True)])
    weights = np.asarray([s.tokens for s in samples], float)
    residual = residual - np.average(residual, weights=weights)
    total = float(np.average(residual**2, weights=weights))
    order = np.argsort([s.mid_s for s in samples])
    mids = np.asarray([samples[i].mid_s for i in order])
    r = residual[order]
    w = weights[order]
    lags, covariances = [], []
    for low, high in zip(LAG_EDGES, LAG_EDGES[1:], strict=False):
        product = pair_weight = lag_sum = 0.0
        for i in range(len(mids)):
            j0 = bisect.bisect_right(mids, mids[i] + low, lo=i + 1)
            j1 = bisect.bisect_right(mids, mids[i] + high, lo=j0)
            if j1 > j0:
                pw = w[i] * w[j0:j1]
                product += float((pw * r[i] * r[j0:j1]).sum())
                pair_weight += float(pw.sum())
                lag_sum += float((pw * (mids[j0:j1] - mids[i])).sum())
        if pair_weight > 0:
            lags.append(lag_sum / pair_weight)
            covariances.append(product / pair_weight)
    shared, correlation_s = _fit_drift(lags, covariances, total)
    return SpeedNoise(math.sqrt(shared), correlation_s, math.sqrt(max(total - shared, 0.0)))


def _fit_drift(lags: list[float], covariances: list[float], total: float) -> tuple[float, float]:
    """(variance, correlation time) of ``cov(lag) = variance · exp(−lag / time)``, by a grid over
    the time and least squares for the variance, the variance at most ``total``."""
    best = (0.0, 1.0, math.inf)
    lag = np.asarray(lags)
    cov = np.asarray(covariances)
    for time_s in np.geomspace(0.25, 120.0, 60):
        shape = np.exp(-lag / time_s)
        variance = min(max(float(shape @ cov / (shape @ shape)), 0.0), total)
        error = float(((cov - variance * shape) ** 2).sum())
        if error < best[2]:
            best = (variance, float(time_s), error)
    return best[0], best[1]


def calibrate(
    requests: Sequence[TracedRequest], shared_machine: bool = False, max_concurrency: int = 32
) -> Calibration:
    """Pools from ``requests``' traced calls; with ``shared_machine`` also the contention between
    the pools and the machine's speed noise (one machine: every replica on the same cores)."""
    samples = call_samples(requests)
    fitted = fit_curves(requests)
    glimpse = mean_glimpse_s(requests)
    profiles: dict[str, EngineProfile] = {}
    busy: dict[str, float] = {}
    for pool in POOLS:
        base = traced_profile(pool, fitted[pool], max_concurrency, glimpse if pool == "small" else 0.0)
        curve, busy[pool] = fit_pool(samples, pool, shared_machine)
        if curve:
            base = replace(base, decode_s=curve, notes={"source": "binned from traced calls in the deployment"})
        profiles[pool] = base
    if not shared_machine:
        return Calibration(profiles)
    other = {pool: POOLS[1 - POOLS.index(pool)] for pool in POOLS}
    contention = Contention({pool: {other[pool]: busy[pool]} for pool in POOLS if busy[pool] > 0})
    noise = fit_noise(samples, [predict(s, profiles, busy) for s in samples])
    return Calibration(profiles, contention, noise)
