"""`agentstream serve-model`: trained checkpoints over an OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated

import typer

from agentstream.cli.context import console, resolved_settings

__all__ = ["serve_model"]


def serve_model(
    resource: Annotated[
        list[str],
        typer.Option("--resource", help="LLM resource whose checkpoint versions to serve (repeat)."),
    ],
    host: Annotated[str | None, typer.Option(help="Listen address; default model_server.host.")] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port; default model_server.port (0: a free one).")
    ] = None,
) -> None:
    """Serve an LLM resource's checkpoints over an OpenAI-compatible API (CPU), following new versions
    and label moves live: request model NAME (production), NAME:vN or NAME@label."""
    from agentstream.serving.model_server import ModelServer

    server = ModelServer(resolved_settings(), resource, host=host, port=port)
    server.run(
        on_ready=lambda url: console.print(
            f"Serving {', '.join(resource)} at [bold]{url}[/] (model NAME, NAME:vN or NAME@label) — Ctrl-C to stop"
        )
    )
