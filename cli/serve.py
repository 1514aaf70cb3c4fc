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
    and label moves live: request model NAME (production), NAME:vN or NAME@label.

    Clients send `Authorization: Bearer <token>` (an OpenAI client's api_key); the token is in
    <data_dir>/secrets/model-server.token (made on first start) unless model_server.require_token
    is off."""
    from agentstream.serving.model_server import ModelServer, token_file

    settings = resolved_settings()
    server = ModelServer(settings, resource, host=host, port=port)

    def ready(url: str) -> None:
        console.print(
            f"Serving {', '.join(resource)} at [bold]{url}[/] (model NAME, NAME:vN or NAME@label) — Ctrl-C to stop"
        )
        if server.token is not None:  # where the token is, never the token itself
            console.print(f"API key: in {token_file(settings)}", markup=False, highlight=False)

    server.run(on_ready=ready)
