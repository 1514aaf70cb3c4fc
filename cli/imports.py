"""``agentstream import FILE...``: load exported traces (OTLP JSON, Agent Lightning span dumps) into
the spans and rewards topics, keeping their original ids and timestamps."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentstream.cli.context import console, err_console, resolved_settings

if TYPE_CHECKING:
    from agentstream.producers.otlp.files import FileBatch
    from agentstream.producers.otlp.ingest import IngestResult, OtlpIngest
    from agentstream.settings import Settings

__all__ = ["ImportSummary", "import_files", "import_paths"]

#: batches waiting for Kafka before the reader waits for the oldest
_MAX_PENDING = 64


@dataclass
class ImportSummary:
    """What an import did."""

    files: int = 0
    spans: int = 0
    rewards: int = 0
    #: reason -> count, for rejected items and unreadable values or files
    rejected: Counter[str] = field(default_factory=Counter)
    #: Kafka refused a batch (the import is incomplete)
    failures: list[str] = field(default_factory=list)

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())


def _reason(text: str) -> str:
    """A reason without the per-item detail after the first colon of the span name, for grouping."""
    return text if len(text) <= 160 else text[:157] + "..."


def import_paths(
    settings: Settings,
    paths: Iterable[Path],
    *,
    on_batch: Callable[[FileBatch], None] | None = None,
    ingest: OtlpIngest | None = None,
) -> ImportSummary:
    """Read, normalise and publish every file of ``paths``; returns once Kafka acknowledged all.

    Args:
        settings: resolved settings.
        paths: OTLP JSON files or Agent Lightning span dumps (see :mod:`agentstream.producers.otlp.files`).
        on_batch: called after each batch was handed to Kafka (progress).
        ingest: publish through this ingest (default: a new one, closed at the end).
    """
    from agentstream.producers.otlp.dialects import Normalised, normalise_logs, normalise_spans
    from agentstream.producers.otlp.files import read_file
    from agentstream.producers.otlp.ingest import IngestBusy, OtlpIngest

    summary = ImportSummary()
    own = ingest is None
    publisher = OtlpIngest(settings, client_name="import") if ingest is None else ingest
    pending: deque[Future[IngestResult]] = deque()

    def settle(future: Future[IngestResult]) -> None:
        try:
            result = future.result()
        except Exception as e:  # noqa: BLE001 - Kafka refused the batch: reported, the import goes on
            summary.failures.append(str(e))
            return
        summary.spans += result.accepted_spans
        summary.rewards += result.accepted_rewards
        for item in result.rejected:
            summary.rejected[_reason(item.reason)] += 1

    def publish(normalised: Normalised) -> None:
        while True:
            try:
                pending.append(publisher.publish(normalised))
                break
            except IngestBusy:
                if pending:
                    settle(pending.popleft())
                else:
                    time.sleep(0.05)  # records of another user of the ingest wait for Kafka
        while len(pending) > _MAX_PENDING:
            settle(pending.popleft())

    try:
        for path in paths:
            try:
                batches = list(read_file(path))  # OSError on the first value
            except OSError as e:
                summary.rejected[f"{path}: cannot read ({e.strerror or e})"] += 1
                continue
            summary.files += 1
            for batch in batches:
                if batch.error:
                    summary.rejected[_reason(f"{Path(batch.path).name}:{batch.line}: {batch.error}")] += 1
                normalised = normalise_spans(batch.spans)
                if batch.logs:
                    logs = normalise_logs(batch.logs)
                    normalised.rewards.extend(logs.rewards)
                    normalised.rejected.extend(logs.rejected)
                publish(normalised)
                if on_batch is not None:
                    on_batch(batch)
        while pending:
            settle(pending.popleft())
        publisher.flush()
    finally:
        if own:
            publisher.close()
    return summary


def _print(summary: ImportSummary) -> None:
    table = Table(title="agentstream import")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("files", str(summary.files))
    table.add_row("spans", str(summary.spans))
    table.add_row("rewards", str(summary.rewards))
    table.add_row("rejected (dead-lettered or unreadable)", str(summary.rejected_count))
    console.print(table)
    if summary.rejected:
        reasons = Table(title="rejected, by reason")
        reasons.add_column("count", justify="right")
        reasons.add_column("reason", overflow="fold")
        for reason, count in summary.rejected.most_common(20):
            reasons.add_row(str(count), reason)
        console.print(reasons)
    for failure in summary.failures[:5]:
        err_console.print(f"Kafka refused a batch: {failure}", style="red", markup=False, highlight=False)


def import_files(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="OTLP JSON files (one export request per line, or one per file) or Agent Lightning "
            "span dumps (a JSON list or JSON lines of spans).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
) -> None:
    """Import exported traces into the spans and rewards topics, keeping their ids and timestamps.

    Spans and log records go through the same normaliser as the OTLP receiver (OTel GenAI,
    OpenLLMetry, OpenInference, Agent Lightning, AgentOps dialects); what it rejects goes to the
    dead-letter topic with the reason, and the summary counts it.
    """
    settings = resolved_settings()
    sizes: Sequence[int] = [f.stat().st_size for f in files]
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("importing", total=sum(sizes))

        def advance(batch: FileBatch) -> None:
            progress.update(task, advance=batch.size, description=Path(batch.path).name)

        summary = import_paths(settings, files, on_batch=advance)
    _print(summary)
    if summary.failures:
        raise typer.Exit(1)
