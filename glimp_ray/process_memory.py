"""A process's resident memory, read from ``/proc`` (Linux), for the replicas' memory gauges and
the soak benchmark. Elsewhere it is unknown (``None``), never a guess."""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of ``pid`` (default: this process) in bytes, or None where ``/proc`` is
    missing or the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None
