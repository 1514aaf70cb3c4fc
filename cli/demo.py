"""`agentstream demo`: the improvement loop, end to end, on the embedded default stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentstream.cli.context import console, err_console, state

__all__ = ["demo"]


def demo(
    seed: Annotated[int, typer.Option(help="Random seed (tickets order, sampling, APO).")] = 7,
    rounds: Annotated[int, typer.Option(help="APO rounds (each: candidates, validation, A/B).")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON here.")] = None,
    plot: Annotated[Path, typer.Option(help="Where the PNG plot of success rate per version goes.")] = Path(
        "agentstream-demo.png"
    ),
    val_items: Annotated[
        int | None, typer.Option(help="Validation tickets per score (default: all 60).")
    ] = None,
    test_items: Annotated[
        int | None, typer.Option(help="Test tickets in the final report (default: all 100).")
    ] = None,
    tickets: Annotated[
        Path | None,
        typer.Option(
            help="Your own tickets instead of the bundled ones: JSONL, one object per line with text, "
            "queue and split (train/val/test), optionally priority and ticket_id.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    test_tickets: Annotated[
        Path | None,
        typer.Option(
            help="An external test file (same JSONL, split not needed): scored on the seed and the final version.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    optimizer_url: Annotated[
        str | None,
        typer.Option(
            help="An OpenAI-compatible endpoint whose model writes textual gradients (critique and rewrite); "
            "its key comes from OPENAI_API_KEY. Without one, APO says so and proposes candidates built from "
            "the good calls only (retrieved demonstrations)."
        ),
    ] = None,
    optimizer_model: Annotated[str, typer.Option(help="The optimizer endpoint's model.")] = "gpt-4.1-mini",
    sft: Annotated[
        bool,
        typer.Option(
            help="After APO, LoRA-tune the model on the good calls (distilled into the bare-ticket prompt) "
            "and score it as a candidate too (about 3 minutes on 2 cores; needs the train extra)."
        ),
    ] = True,
) -> None:
    """The improvement loop on the embedded default: a support agent on a local Gemma model gets better by
    itself (APO and SFT from its triplets, A/B promotion), with every version recorded."""
    from agentstream.examples.improvement_loop import DemoConfig, run_demo
    from agentstream.examples.tickets import TicketFileError

    config = DemoConfig(
        seed=seed,
        rounds=rounds,
        val_items=val_items,
        test_items=test_items,
        tickets=tickets,
        test_tickets=test_tickets,
        optimizer_url=optimizer_url,
        optimizer_model=optimizer_model,
        sft=sft,
    )
    try:
        report = run_demo(state.settings, config, console, plot, json_path)
    except TicketFileError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    if report.test_final_success <= report.test_seed_success:
        err_console.print("[yellow]The final prompt did not beat the seed on the test split.[/]")
