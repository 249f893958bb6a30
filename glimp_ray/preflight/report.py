"""What ``glimp-ray check`` found: one row per deployment, one line per problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Problem:
    """One thing that stops (error) or hurts (warning) a deployment, named by the field to change."""

    level: Literal["error", "warning"]
    where: str  # the config or manifest field, e.g. serving.large.accelerator_type
    message: str  # what is wrong and the fix

    def line(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


def error(where: str, message: str) -> Problem:
    return Problem("error", where, message)


def warning(where: str, message: str) -> Problem:
    return Problem("warning", where, message)


@dataclass
class Row:
    """One deployment: where its replicas land and, for a model pool, what its KV cache holds."""

    deployment: str
    node_type: str = "-"  # the node types its replicas land on, or "-" without a cluster
    fit: int | None = None  # replicas that fit (None: no cluster to place them on)
    max_replicas: int = 1
    gpus: float = 0.0  # per replica (a sharded replica: its tensor-parallel degree)
    gpu: str = "-"  # the GPU type and memory the memory check used
    kv_tokens: int | None = None
    contexts: float | None = None  # full max_model_len contexts the KV cache holds
    max_num_seqs: int | None = None

    def cells(self) -> list[str]:
        fit = f"{self.fit}/{self.max_replicas}" if self.fit is not None else f"?/{self.max_replicas}"
        kv = f"{self.kv_tokens:,}" if self.kv_tokens is not None else "-"
        contexts = "-"
        if self.contexts is not None and self.max_num_seqs is not None:
            contexts = f"{self.contexts:.1f} / {self.max_num_seqs}"
        return [self.deployment, self.node_type, fit, f"{self.gpus:g}", self.gpu, kv, contexts]


HEADER = ["deployment", "node type", "replicas", "GPUs", "GPU", "KV tokens", "contexts / max_num_seqs"]


@dataclass
class Report:
    """The check of one application (or one in-process config)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def format(self) -> str:
        lines = [self.title]
        if self.rows:
            table = [HEADER, *(row.cells() for row in self.rows)]
            widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
            lines.append("")
            lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table]
        if self.problems:
            lines.append("")
            lines += [p.line() for p in sorted(self.problems, key=lambda p: p.level != "error")]
        lines.append("")
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)
