"""``agentstream otlp``: the OTLP receiver alone (``agentstream up`` runs it as a member)."""

from __future__ import annotations

from typing import Annotated

import typer

from agentstream.cli.context import console, err_console, resolved_settings, stop_event

__all__ = ["otlp"]


def otlp(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default otlp.host, 127.0.0.1).")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="OTLP/HTTP port (default otlp.http_port, 4318).")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="OTLP/gRPC port (default otlp.grpc_port, 4317).")
    ] = None,
) -> None:
    """Receive OTLP traces and logs (HTTP, gRPC, the Collector's Kafka topics) until Ctrl-C.

    Exporters send `Authorization: Bearer <token>`; the token is in <data_dir>/secrets/otlp.token
    (made on first start) unless otlp.require_token is off.
    """
    from agentstream.producers.otlp.receiver import token_file
    from agentstream.producers.otlp.service import OtlpService, run_otlp

    settings = resolved_settings()
    given = (("host", host), ("http_port", http_port), ("grpc_port", grpc_port))
    ports = {k: v for k, v in given if v is not None}
    if ports:
        settings = settings.model_copy(update={"otlp": settings.otlp.model_copy(update=ports)})

    def started(service: OtlpService) -> None:
        console.print(
            f"OTLP/HTTP on [bold]{service.http_url}[/]   OTLP/gRPC on [bold]{service.grpc_address}[/]"
        )
        if settings.otlp.collector_topics:
            console.print(f"Collector topics: {', '.join(settings.otlp.collector_topics)}")
        if settings.otlp.require_token:  # where the token is, never the token itself
            console.print(f"Bearer token: in {token_file(settings)}", markup=False, highlight=False)

    try:
        run_otlp(settings, stop_event(), started)
    except OSError as e:
        err_console.print(f"[red]Could not start the OTLP receiver:[/] {e}")
        raise typer.Exit(1) from e
