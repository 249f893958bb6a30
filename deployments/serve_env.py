"""The Ray Serve settings glimp-ray runs under: Serve's throughput-optimized mode.

A request makes several pool calls (one per run of easy steps, one per hard step, one for the
answer), so the cost of a Serve call matters as much as the models'. Serve's
``RAY_SERVE_THROUGHPUT_OPTIMIZED`` mode makes handle calls over gRPC, runs user code and the
handle's router on the replica's own event loop and freezes the GC after start-up; measured on the
demo pair (`benchmarks/bench_streaming.py`), it halves the overhead of a pool call. Direct ingress
(the ingress replica listening on port 8000 itself, which that mode also turns on) stays off: the
proxy keeps the port and routes of ``http_options``. That mode also stops Serve logging to stderr;
its logs are in the session's log folder (``/tmp/ray/session_latest/logs/serve``), and
``RAY_SERVE_LOG_TO_STDERR=1`` brings them back.

The variables are read when a process imports ``ray.serve``: set them where the cluster's processes
inherit them (``make serve``, both cluster manifests; local clusters started by the tests and the
benchmarks call :func:`apply` first). A driver that calls handles synchronously
(``handle.method.remote().result()``) must import ``ray.serve`` before :func:`apply`: in that mode a
handle needs a running event loop. The pool clients choose the gRPC transport per call
(``glimp_ray/pool_clients.py``), whatever the environment of the process that built the app.
"""

from __future__ import annotations

import os

SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}


def apply() -> None:
    """Set :data:`SERVE_ENV` in this process's environment (values already set win), so the Ray
    processes it starts inherit them (this process keeps what it read when it imported ray.serve)."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
