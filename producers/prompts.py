"""Rendering a prompt-template resource for one request: variables, retrieved demonstrations, and
the response prefix the model continues.

    prompt = rollout.render("support-prompt", ticket=text)
    completion = client.completions.create(model=..., prompt=prompt.text, ...)
    call = prompt.response(completion.choices[0].text)

A template with a ``{{demonstrations}}`` variable and ``retrieval.*`` config gets the nearest
good examples of its pool (:mod:`agentstream.retrieval`), from the pool version this rollout
resolved (so the pool version is stamped on the rollout like the prompt's). A version's
``response_prefix`` config is appended to the prompt: the model continues it, and
:meth:`Prompt.response` puts it back in front of what the model wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentstream.retrieval import (
    Demonstration,
    DemonstrationPool,
    PoolError,
    RetrievalSettings,
    render_demonstrations,
)
from agentstream.retrieval import select as select_demonstrations
from agentstream.retrieval.select import DEMONSTRATIONS
from agentstream.schemas import ResourceVersion, TemplateError, render_template

from .warn_once import warn_once

logger = logging.getLogger(__name__)

__all__ = ["Prompt", "render_prompt"]


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: ``text`` goes to the model, which continues ``response_prefix``."""

    text: str
    response_prefix: str = ""
    demonstrations: list[Demonstration] = field(default_factory=list)
    pool_version: int | None = None

    def response(self, completion: str) -> str:
        """The whole response: the prefix the prompt ended with, then the model's completion."""
        return self.response_prefix + completion

    def __str__(self) -> str:
        return self.text


def render_prompt(resolved: Mapping[str, Any], name: str, values: Mapping[str, Any]) -> Prompt:
    """The prompt of resource ``name`` as resolved for a rollout (see the module docstring)."""
    version = resolved.get(name)
    if version is None:
        raise KeyError(f"resource {name!r} was not resolved for this rollout; resolved: {sorted(resolved)}")
    if not isinstance(version, ResourceVersion) or version.template is None:
        raise TemplateError(f"{name} is not a prompt template")
    prefix = version.config.get("response_prefix", "")
    settings = RetrievalSettings.from_config(version.config)
    if settings is None:
        return Prompt(render_template(version.template, values) + prefix, prefix)
    pool_version = resolved.get(settings.pool)
    # No pool yet (nothing good has happened) renders no demonstrations rather than failing the agent.
    pool = _pool(pool_version) if isinstance(pool_version, ResourceVersion) else DemonstrationPool()
    chosen = select_demonstrations(pool, values, settings)
    text = render_template(
        version.template, {**values, DEMONSTRATIONS: render_demonstrations(version.template, chosen)}
    )
    return Prompt(text + prefix, prefix, chosen, pool.version or None)


#: Parsed pools by (name, version, content hash): parsing and indexing one costs milliseconds, and
#: every request of a pool version can share it. Bounded; a pool version never changes.
_POOLS: dict[tuple[str, int, str], DemonstrationPool] = {}
_POOLS_MAX = 16


def _pool(version: ResourceVersion) -> DemonstrationPool:
    key = (version.resource_name, version.version, version.content_hash)
    pool = _POOLS.get(key)
    if pool is None:
        try:
            pool = DemonstrationPool.from_version(version)
        except PoolError as e:
            # a malformed pool version costs this prompt its demonstrations, not the agent its run
            warn_once(logger, "bad-demonstration-pool", "%s: rendering without demonstrations.", e)
            pool = DemonstrationPool()
        if len(_POOLS) >= _POOLS_MAX:
            _POOLS.pop(next(iter(_POOLS)), None)
        _POOLS[key] = pool
    return pool
