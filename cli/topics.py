"""`agentstream topics`: the Kafka topic catalogue."""

from __future__ import annotations

import typer
from rich.table import Table

from agentstream.cli.context import console, resolved_settings, state

__all__ = ["topics_app"]

topics_app = typer.Typer(help="The Kafka topic catalogue.", no_args_is_help=True)


@topics_app.command("create")
def topics_create() -> None:
    """Create missing topics of the catalogue (idempotent)."""
    from agentstream.topics.admin import ensure_topics

    statuses = ensure_topics(resolved_settings())
    table = Table("topic", "partitions", "cleanup", "result")
    for s in statuses:
        table.add_row(
            s.name, str(s.partitions), s.cleanup_policy, s.outcome + (f" ({s.detail})" if s.detail else "")
        )
    console.print(table)
    if any(s.outcome == "mismatch" for s in statuses):
        raise typer.Exit(1)


@topics_app.command("list")
def topics_list() -> None:
    """Show the topic catalogue: keys, value schemas, cleanup policies."""
    from agentstream.topics.catalogue import CATALOGUE

    settings = state.settings
    table = Table("topic", "key", "value", "partitions", "cleanup", "retention", "purpose")
    for spec in CATALOGUE:
        retention = f"{spec.retention_ms // 86_400_000}d" if spec.retention_ms else "-"
        table.add_row(
            settings.topic(spec.name),
            spec.key,
            spec.value_schema or "raw",
            str(spec.partition_count(settings.partitions)),
            spec.cleanup_policy,
            retention,
            spec.description,
        )
    console.print(table)
