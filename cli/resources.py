"""`agentstream resources`: versioned resources (prompt templates, LLM endpoints, checkpoints), their labels."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from agentstream.cli.context import console, err_console, state

if TYPE_CHECKING:
    from agentstream.resources.store import ResourceStore

__all__ = ["resources_app"]

resources_app = typer.Typer(
    help="Versioned resources (prompt templates, LLM endpoints, checkpoints) and their labels.",
    no_args_is_help=True,
)


def _resource_store() -> ResourceStore:
    from agentstream.resources.store import ResourceStore

    return ResourceStore(state.settings, follow=False, who="cli")


@contextmanager
def _resource_errors() -> Iterator[None]:
    """A resource error (unknown name, version or label; a bad template) is a red line and exit 2."""
    from agentstream.resources.store import ResourceError

    try:
        yield
    except ResourceError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None


@resources_app.command("publish")
def resources_publish(
    name: Annotated[str, typer.Argument(help="Resource name, e.g. support-prompt.")],
    template_file: Annotated[
        Path | None,
        typer.Option("--template-file", help="Prompt template ({{variable}} placeholders).", exists=True),
    ] = None,
    uri: Annotated[str | None, typer.Option(help="LLM base_url or checkpoint / adapter URI.")] = None,
    kind: Annotated[str | None, typer.Option(help="prompt_template, llm, model_checkpoint or other.")] = None,
    variable: Annotated[
        list[str] | None,
        typer.Option("--variable", help="Declared template variable (repeat); default: as used."),
    ] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config", help="KEY=VALUE (repeat), e.g. model=gemma.")
    ] = None,
    parent: Annotated[int | None, typer.Option(help="The version this one derives from.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="Label to point at it (repeat).")] = None,
) -> None:
    """Publish a new immutable version (variables are checked against the template)."""
    pairs = dict(item.split("=", 1) for item in (config or []) if "=" in item)
    template = template_file.read_text() if template_file is not None else None
    with _resource_errors(), _resource_store() as store:
        version = store.publish(
            name,
            template=template,
            uri=uri,
            kind=kind,
            variables=variable or None,
            config=pairs,
            parent_version=parent,
            labels=label or [],
        )
    console.print(
        f"{name} [bold]v{version.version}[/] ({version.kind}, {version.content_hash})"
        + (f" labelled {', '.join(label)}" if label else "")
    )


@resources_app.command("list")
def resources_list(name: Annotated[str | None, typer.Argument(help="Only this resource.")] = None) -> None:
    """Every resource version with its labels and lineage."""
    with _resource_errors(), _resource_store() as store:
        table = Table("resource", "version", "kind", "labels", "parent", "created", "by", "lineage")
        for resource in [name] if name else store.names():
            current = store.state(resource)
            for number, version in sorted(current.versions.items()):
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version.created_at / 1e6))
                lineage = ", ".join(f"{k}={v}" for k, v in sorted(version.lineage.items()))
                table.add_row(
                    resource,
                    f"v{number}",
                    version.kind,
                    ", ".join(current.labels_of(number)),
                    f"v{version.parent_version}" if version.parent_version else "",
                    created,
                    version.created_by,
                    lineage[:80],
                )
    console.print(table)


@resources_app.command("show")
def resources_show(
    name: Annotated[str, typer.Argument()],
    ref: Annotated[str, typer.Argument(help="Version number or label.")] = "production",
) -> None:
    """One version: its content, labels and lineage."""
    with _resource_errors(), _resource_store() as store:
        version = store.get(name, ref)
        labels = store.state(name).labels_of(version.version)
    console.print(f"[bold]{name} v{version.version}[/] ({version.kind}) labels: {', '.join(labels) or '-'}")
    for key, value in sorted(
        {**version.config, **{f"lineage.{k}": v for k, v in version.lineage.items()}}.items()
    ):
        console.print(f"  {key}: {value}", markup=False)
    if version.uri:
        console.print(f"  uri: {version.uri}", markup=False)
    if version.template is not None:
        console.print(version.template, markup=False, highlight=False)


@resources_app.command("diff")
def resources_diff(
    name: Annotated[str, typer.Argument()],
    a: Annotated[str, typer.Argument(help="Version or label.")],
    b: Annotated[str, typer.Argument(help="Version or label.")],
) -> None:
    """A unified diff of two versions."""
    with _resource_errors(), _resource_store() as store:
        console.print(store.diff(name, a, b) or "(identical)", markup=False, highlight=False)


@resources_app.command("label")
def resources_label(
    name: Annotated[str, typer.Argument()],
    label: Annotated[str, typer.Argument(help="production, candidate or your own.")],
    ref: Annotated[
        str | None, typer.Argument(help="Version or label to point at; omit with --remove.")
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the label.")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the label history).")] = "",
) -> None:
    """Move a label to a version (runners switch at their next attempt), or remove it."""
    if (ref is None) != remove:
        err_console.print("[red]give a version to point at, or --remove[/]")
        raise typer.Exit(2)
    with _resource_errors(), _resource_store() as store:
        event = store.label(name, label, None if remove else ref, reason=reason or "cli")
    console.print(
        f"{name}/{label}: v{event.previous_version} -> "
        + (f"v{event.version}" if event.version else "removed")
    )


@resources_app.command("rollback")
def resources_rollback(
    name: Annotated[str, typer.Argument()],
    label: Annotated[str, typer.Option(help="The label to move back.")] = "production",
    to: Annotated[
        str | None, typer.Option(help="Version to go back to; default: where it was before.")
    ] = None,
) -> None:
    """Instant rollback: move the label back to its previous version."""
    with _resource_errors(), _resource_store() as store:
        event = store.rollback(name, label, to)
    console.print(f"{name}/{label}: v{event.previous_version} -> v{event.version}")
