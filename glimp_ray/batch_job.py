"""Offline GlimpRouter jobs over datasets with Ray Data: resumable, with routing traces.

Rows (JSONL or Parquet: an id column and a prompt or chat-messages column) flow through
Ray Data actors that each hold both engines (or call a running Serve app). The driver
writes finished rows in chunks, each to a temporary file renamed into place, so a crash
loses no finished row and a rerun skips the ids already written: every id ends up
written exactly once. Rows that cannot be run go to ``errors-*.jsonl`` with the reason.
Step records are also written as spans (``traces-*.jsonl``) that ``glimp-ray calibrate``
and ``glimp-ray plan`` read.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from glimp_ray.collab import CollabResult
from glimp_ray.prompts import PLACEHOLDER, apply_template
from glimp_ray.tracing import CollectingSpanExporter, request_span

RESULTS, ERRORS, TRACES = "results", "errors", "traces"


@dataclass(frozen=True)
class BatchColumns:
    id: str = "id"
    prompt: str = "prompt"
    messages: str = "messages"
    prompt_template: str = PLACEHOLDER  # a prompt row's user message (glimp_ray.prompts); messages rows as given


def read_done_ids(output: Path) -> set[str]:
    """Ids already written (results and errors) by earlier runs into ``output``."""
    done: set[str] = set()
    for kind in (RESULTS, ERRORS):
        for path in output.glob(f"{kind}-*.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    done.add(str(json.loads(line)["id"]))
    return done


ROW = "row"


def _rows_as_json(batch: Any, id_column: str = "id", done: frozenset[str] | set[str] = frozenset()) -> Any:
    """Input rows not already done, each as ``{"id": str, "row": json}`` (missing cells left out)."""
    import pandas as pd

    rows = [
        {key: _plain(value) for key, value in record.items() if not _missing(value)}
        for record in batch.to_dict("records")
    ]
    rows = [row for row in rows if str(row.get(id_column)) not in done]
    return pd.DataFrame({"id": [str(row.get(id_column)) for row in rows], ROW: [json.dumps(row) for row in rows]})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (what pandas hands over) as plain Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def row_inputs(row: dict[str, Any], columns: BatchColumns, max_prompt_chars: int) -> dict[str, Any]:
    """``{"messages": ...}`` or ``{"prompt": ...}`` for the loop; ValueError says why a row is bad."""
    messages = row.get(columns.messages)
    prompt = row.get(columns.prompt)
    if messages is not None and not (isinstance(messages, float) and messages != messages):
        if hasattr(messages, "tolist"):
            messages = messages.tolist()
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{columns.messages} must be a non-empty list of messages")
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise ValueError(f"each of {columns.messages} needs string role and content")
        if sum(len(m["content"]) for m in messages) > max_prompt_chars:
            raise ValueError(f"messages longer than {max_prompt_chars} characters")
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    if prompt is None or (isinstance(prompt, float) and prompt != prompt):
        raise ValueError(f"missing {columns.prompt} (or {columns.messages})")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{columns.prompt} must be a non-empty string, got {type(prompt).__name__}")
    if len(prompt) > max_prompt_chars:
        raise ValueError(f"prompt longer than {max_prompt_chars} characters")
    return {"messages": [{"role": "user", "content": apply_template(columns.prompt_template, prompt)}]}


class CollabWorker:
    """A Ray Data actor: runs the collaboration for each row of a batch, against the two
    engine actors of the job or the pools of a running Serve application."""

    def __init__(
        self,
        config: dict[str, Any],
        columns: BatchColumns,
        pools: tuple[Any, Any] | None = None,
        serve_app: str | None = None,
        max_prompt_chars: int = 100_000,
        concurrency: int = 4,
    ):
        from glimp_ray.collab import Collaborator
        from glimp_ray.config import GlimpConfig

        parsed = GlimpConfig.model_validate(config)
        if serve_app:
            from ray import serve

            from glimp_ray.pool_clients import ServeStepClient

            small: Any = ServeStepClient(serve.get_deployment_handle("SmallPool", app_name=serve_app), "small")
            large: Any = ServeStepClient(serve.get_deployment_handle("LargePool", app_name=serve_app), "large")
        else:
            from glimp_ray.pool_clients import ActorStepClient

            assert pools is not None
            small, large = ActorStepClient(pools[0]), ActorStepClient(pools[1])
        self.collab = Collaborator(small, large, parsed.collab_params())
        self.spans = CollectingSpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = provider.get_tracer("glimp_ray.batch_job")
        self.columns = columns
        self.max_prompt_chars = max_prompt_chars
        self.concurrency = concurrency

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        rows = [json.loads(r) for r in batch[ROW]]
        out = asyncio.run(self._run_all(rows))
        return pd.DataFrame({"record": [json.dumps(r) for r in out]})

    async def _run_all(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                return await self._run(row)

        return list(await asyncio.gather(*(one(r) for r in rows)))

    async def _run(self, row: dict[str, Any]) -> dict[str, Any]:
        row_id = str(row.get(self.columns.id))
        request_id = f"batch-{row_id}-{uuid.uuid4().hex[:8]}"
        trace_id = ""
        try:
            inputs = row_inputs(row, self.columns, self.max_prompt_chars)
            # The same spans as the router's (tracing's one schema), written with the row.
            with request_span(self.tracer, request_id, self.collab.params) as span:
                trace_id = span.trace_id
                async for event in self.collab.stream(request_id=request_id, **inputs):
                    span.observe(event)
            result = event
            assert isinstance(result, CollabResult)
        except Exception as exc:  # the job goes on; the row is reported
            self.spans.pop(trace_id)
            return {"id": row_id, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "id": row_id,
            "spans": self.spans.pop(trace_id),
            "answer": result.answer,
            "reasoning": result.reasoning,
            "trace": [
                {
                    "index": s.index,
                    "model": s.model,
                    "entropy": s.entropy,
                    "tokens": s.tokens,
                    "model_s": s.model_s,
                    "glimpse_s": s.glimpse_s,
                }
                for s in result.steps
            ],
            "answer_model": result.answer_record.model,
            "answer_tokens": result.answer_record.tokens,
            "answer_model_s": result.answer_record.model_s,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "large_step_fraction": result.large_step_fraction,
            "latency_s": result.latency_s,
        }


def start_engine_actors(
    config: dict[str, Any],
    small_resources: dict[str, Any] | None = None,
    large_resources: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The small and the large engine, each in its own actor on its own resources.

    For a user's own pipeline::

        pools = start_engine_actors(config, {"num_gpus": 1}, {"num_gpus": 1})
        ds = ds.map_batches(CollabWorker, fn_constructor_args=(config, BatchColumns(), pools),
                            batch_format="pandas", concurrency=2)
    """
    import ray

    from glimp_ray.config import GlimpConfig
    from glimp_ray.step_server import StepServer

    parsed = GlimpConfig.model_validate(config)
    remote = ray.remote(StepServer)
    return (
        remote.options(**{"num_cpus": 0.25, **(small_resources or {})}).remote(parsed.small.model_dump()),
        remote.options(**{"num_cpus": 0.25, **(large_resources or {})}).remote(parsed.large.model_dump()),
    )


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.rename(path)  # a reader (or a resumed run) never sees half a chunk


def run_batch(
    config: dict[str, Any],
    input_path: str,
    output: str,
    serve_app: str | None = None,
    columns: BatchColumns | None = None,
    batch_size: int = 8,
    actors: int = 1,
    num_cpus: float = 0.25,
    max_prompt_chars: int = 100_000,
    small_resources: dict[str, Any] | None = None,
    large_resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the job; returns the summary (rows, errors, steps, large-step fraction, tokens/s).

    Without ``serve_app`` the job loads the small and the large model once each, in two
    actors placed by ``small_resources`` / ``large_resources`` (``ray.remote`` options such
    as ``num_gpus``, ``accelerator_type``, ``label_selector``); ``actors`` Ray Data workers
    (``num_cpus`` each) run the loop against them.
    """
    import ray

    columns = columns or BatchColumns()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    done = read_done_ids(out)
    if input_path.endswith(".parquet") or Path(input_path).is_dir():
        dataset = ray.data.read_parquet(input_path)
    elif input_path.endswith((".jsonl", ".json")):
        dataset = (
            ray.data.read_json(input_path, lines=True)
            if input_path.endswith(".jsonl")
            else ray.data.read_json(input_path)
        )
    else:
        raise ValueError(f"input must be .jsonl, .json or .parquet, got {input_path}")
    if columns.id not in dataset.columns():
        raise ValueError(f"input has no {columns.id!r} column (columns: {', '.join(dataset.columns())})")
    # Each row travels as one JSON string: a column whose type varies between rows (a bad row's
    # number among prompts) cannot break Arrow when Ray Data re-splits the blocks.
    dataset = dataset.map_batches(
        _rows_as_json, fn_kwargs={"id_column": columns.id, "done": done}, batch_format="pandas", batch_size=None
    )
    pools = None if serve_app else start_engine_actors(config, small_resources, large_resources)
    results = dataset.map_batches(
        CollabWorker,
        fn_constructor_args=(config, columns, pools, serve_app, max_prompt_chars),
        batch_size=batch_size,
        batch_format="pandas",
        concurrency=actors,
        num_cpus=num_cpus,
    )
    start = time.perf_counter()
    rows = errors = steps = large_steps = tokens = 0
    for batch in results.iter_batches(batch_size=batch_size, batch_format="pandas"):
        records = [json.loads(r) for r in batch["record"]]
        good = [r for r in records if "error" not in r]
        bad = [r for r in records if "error" in r]
        chunk = uuid.uuid4().hex[:12]
        if good:
            # Traces first: a crash between the two renames re-runs the rows, never loses them.
            spans = [span for r in good for span in r.pop("spans")]
            _write_atomically(out / f"{TRACES}-{chunk}.jsonl", (json.dumps(s) + "\n" for s in spans))
            _write_atomically(out / f"{RESULTS}-{chunk}.jsonl", (json.dumps(r) + "\n" for r in good))
        if bad:
            _write_atomically(out / f"{ERRORS}-{chunk}.jsonl", (json.dumps(r) + "\n" for r in bad))
        rows += len(good)
        errors += len(bad)
        for r in good:
            steps += len(r["trace"])
            large_steps += sum(s["model"] == "large" for s in r["trace"])
            tokens += r["completion_tokens"]
    elapsed = time.perf_counter() - start
    return {
        "rows": rows,
        "errors": errors,
        "skipped_already_done": len(done),
        "steps": steps,
        "large_step_fraction": large_steps / steps if steps else 0.0,
        "tokens_per_s": tokens / elapsed if elapsed else 0.0,
        "rows_per_s": rows / elapsed if elapsed else 0.0,
        "seconds": elapsed,
    }


def merge_traces(output: str, target: str) -> int:
    """Concatenate a job's trace chunks into one span file for calibrate/plan."""
    lines: list[str] = []
    for path in sorted(Path(output).glob(f"{TRACES}-*.jsonl")):
        lines.extend(line + "\n" for line in path.read_text().splitlines() if line.strip())
    Path(target).write_text("".join(lines))
    return len(lines)
