"""The demo's finalists: which of a round's candidates (APO's best, SFT's) goes to the A/B."""

from __future__ import annotations

from collections.abc import Sequence

from agentstream.schemas import ResourceVersion

__all__ = ["cheapest_within_noise", "demonstrations_per_request", "describe"]


def describe(version: ResourceVersion) -> str:
    """What kind of candidate a prompt version is, for the console."""
    if version.lineage.get("trainer") == "sft":
        return f"SFT: {version.lineage.get('sft.model')} on the bare ticket"
    return f"APO: {version.lineage.get('apo.strategy', '?')}"


def cheapest_within_noise(
    finalists: Sequence[tuple[ResourceVersion, float]], noise: float
) -> tuple[ResourceVersion, float] | None:
    """The finalist to A/B-test: among those within ``noise`` of the best validation score, the one
    with the fewest retrieved demonstrations per request (a shorter prompt is a cheaper request)."""
    if not finalists:
        return None
    best = max(score for _, score in finalists)
    close = [f for f in finalists if f[1] >= best - noise]
    return min(close, key=lambda f: (demonstrations_per_request(f[0]), -f[1]))


def demonstrations_per_request(version: ResourceVersion) -> int:
    """How many retrieved demonstrations a prompt version puts in each request (0: none)."""
    return int(version.config.get("retrieval.k", "0")) if "retrieval.pool" in version.config else 0
