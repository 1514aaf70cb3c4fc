"""The demonstration pool, built continuously from high-reward triplets.

    curator = DemonstrationCurator(CuratorConfig(prompt_resource="support-prompt"), settings, store)
    curator.start()          # follows the triplets topic; publishes pool versions as good examples arrive
    ...
    curator.stop()

Every ``interval_s`` the curator turns the triplets of the prompt resource that earned at least
``min_reward`` (human handoffs included: a person's answer to the prompt the model saw) into
:class:`~agentstream.retrieval.Demonstration` s, merges them into the pool (deduplicated, bounded)
and, when the pool changed, publishes it as a new version of ``<prompt>.demos`` labelled
``production`` with its lineage (parent pool version, triplet window and count). Runners follow
that label, so a new good example reaches the next request without republishing the prompt; a bad
pool is rolled back like any resource (``agentstream resources rollback``).

:func:`read_examples` is the shared step (APO uses it too): triplet -> the template's input values
(recovered from the rendered prompt with the version's template), the whole response (the
version's ``response_prefix`` put back in front) and its reward.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentstream.resources.store import ResourceError, ResourceStore
from agentstream.retrieval import Demonstration, DemonstrationPool
from agentstream.retrieval.pool import POOL_URI
from agentstream.retrieval.select import DEMONSTRATIONS
from agentstream.schemas import PRODUCTION, ResourceKind, ResourceVersion, Triplet
from agentstream.settings import Settings
from agentstream.topics.catalogue import TRIPLETS, TopicSpec
from agentstream.topics.io import TopicReader

from .apo_templates import message_text, response_class, template_regex

logger = logging.getLogger(__name__)

__all__ = ["CuratorConfig", "DemonstrationCurator", "Example", "examples_of", "read_examples", "reward_of"]


def reward_of(triplet: Triplet, which: str) -> float | None:
    """The reward that ranks a triplet's call: ``"sum"`` of its reward dimensions (its scalar when it
    has none), ``"primary"`` (the scalar), or the named dimension; ``None`` when it has no such reward."""
    if which == "primary":
        return triplet.reward
    if which == "sum":
        dimensions = triplet.reward_dimensions
        return sum(dimensions.values()) if dimensions else triplet.reward
    return triplet.reward_dimensions.get(which)


@dataclass
class Example:
    """One logged LLM call of a prompt resource: its input variables, the response, the reward."""

    values: dict[str, str]
    response: str
    reward: float | None
    feedback: str | None
    version: str
    created_at: int
    rollout_id: str = ""
    triplet_id: str = ""
    model: str = ""


def examples_of(
    triplets: Iterable[Triplet], versions: dict[int, ResourceVersion], which_reward: str = "sum"
) -> list[Example]:
    """The triplets whose prompt matches the template of the version they are stamped with."""
    patterns: dict[str, re.Pattern[str] | None] = {}
    examples = []
    for t in triplets:
        version = versions.get(int(t.resource_version)) if t.resource_version.isdigit() else None
        if version is None or version.template is None:
            continue
        prefix = version.config.get("response_prefix", "")
        if t.resource_version not in patterns:
            patterns[t.resource_version] = template_regex(version.template + prefix)
        pattern = patterns[t.resource_version]
        prompt, response = message_text(t.prompt_messages), message_text(t.response)
        match = pattern.match(prompt) if pattern is not None and prompt is not None else None
        if match is None or response is None:
            continue
        values = {k: v for k, v in match.groupdict().items() if k != DEMONSTRATIONS}
        examples.append(
            Example(
                values,
                prefix + response,
                reward_of(t, which_reward),
                t.feedback,
                t.resource_version,
                t.created_at,
                t.rollout_id,
                t.triplet_id,
                t.model,
            )
        )
    return examples


def read_examples(
    settings: Settings,
    store: ResourceStore,
    resource_name: str,
    *,
    modes: tuple[str, ...] = ("train", "prod"),
    window: int = 5000,
    which_reward: str = "sum",
    timeout: float = 60.0,
) -> list[Example]:
    """The resource's triplets now in the topic (newest revision of each, retractions dropped, the
    most recent ``window``), as examples."""
    newest: dict[str, Triplet] = {}

    def keep(spec: TopicSpec, key: bytes | None, record: Any) -> None:
        if isinstance(record, Triplet) and record.resource_name == resource_name and record.mode in modes:
            held = newest.get(record.triplet_id)
            if held is None or record.version >= held.version:
                newest[record.triplet_id] = record

    TopicReader(settings, (TRIPLETS,), keep, name="examples").read_to_end(timeout)
    kept = sorted((t for t in newest.values() if not t.retracted), key=lambda t: t.created_at)[-window:]
    return examples_of(kept, store.state(resource_name).versions, which_reward)


@dataclass
class CuratorConfig:
    """What goes into the pool of ``prompt_resource``."""

    prompt_resource: str
    #: the pool's resource name (default ``<prompt_resource>.demos``)
    pool_resource: str = ""
    #: the least reward (``reward_of``) an example needs; the demo's calls earn 1.0 routed right +
    #: 1.0 resolved
    min_reward: float = 1.0
    reward_of: str = "sum"
    #: rollout modes learned from (never the evaluation splits)
    modes: tuple[str, ...] = ("train", "prod")
    #: the pool keeps at most this many (best-rewarded, then newest); it travels inline
    max_size: int = 400
    #: how often new examples are published (one version per interval at most)
    interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.pool_resource:
            self.pool_resource = f"{self.prompt_resource}.demos"


class DemonstrationCurator:
    """Keeps ``config.pool_resource`` up to date from the triplets topic (see the module docstring)."""

    def __init__(self, config: CuratorConfig, settings: Settings, store: ResourceStore) -> None:
        self.config = config
        self.settings = settings.resolved()
        self.store = store
        self._lock = threading.Lock()
        self._newest: dict[str, Triplet] = {}
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._reader: TopicReader | None = None
        self._thread: threading.Thread | None = None
        self.published = 0

    def start(self) -> DemonstrationCurator:
        self._reader = TopicReader(self.settings, (TRIPLETS,), self._on_triplet, name="curator").start()
        self._thread = threading.Thread(target=self._run, name="agentstream-curator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(30.0)
        if self._reader is not None:
            self._reader.close()

    def _on_triplet(self, spec: TopicSpec, key: bytes | None, record: Any) -> None:
        cfg = self.config
        if not isinstance(record, Triplet) or record.resource_name != cfg.prompt_resource:
            return
        if record.mode not in cfg.modes:
            return
        with self._lock:
            held = self._newest.get(record.triplet_id)
            if held is None or record.version >= held.version:
                self._newest[record.triplet_id] = record
                self._changed.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.config.interval_s):
            if self._changed.is_set():
                try:
                    self.publish_now()
                except (
                    ResourceError,
                    TimeoutError,
                    RuntimeError,
                ) as e:  # keep curating; say why once per try
                    logger.warning("curator: publishing %s failed: %s", self.config.pool_resource, e)

    def publish_now(self) -> ResourceVersion | None:
        """Fold the triplets seen so far into the pool; publish it if it changed."""
        cfg = self.config
        self._changed.clear()
        with self._lock:
            triplets = [t for t in self._newest.values() if not t.retracted]
        self.store.refresh()
        versions = self.store.state(cfg.prompt_resource).versions
        good = [
            e
            for e in examples_of(triplets, versions, cfg.reward_of)
            if e.reward is not None and e.reward >= cfg.min_reward
        ]
        current, parent = self._current_pool()
        pool = current.merged((_demonstration(e) for e in good), cfg.max_size)
        if not pool.examples or [e.key() for e in pool.examples] == [e.key() for e in current.examples]:
            return None
        window = [e.created_at for e in good] or [0]
        version = self.store.publish(
            cfg.pool_resource,
            kind=ResourceKind.OTHER,
            uri=POOL_URI,
            config=pool.to_config(),
            parent_version=parent,
            lineage={
                "trainer": "curator",
                "pool.for": cfg.prompt_resource,
                "pool.min_reward": f"{cfg.min_reward:g}",
                "pool.added": str(len(pool.examples) - len(current.examples)),
                "triplets.count": str(len(good)),
                "triplets.from_us": str(min(window)),
                "triplets.to_us": str(max(window)),
            },
            labels=[PRODUCTION],
            reason=f"{len(pool.examples)} demonstrations",
        )
        self.published += 1
        return version

    def _current_pool(self) -> tuple[DemonstrationPool, int | None]:
        cfg = self.config
        found = (
            self.store.find(cfg.pool_resource, PRODUCTION)
            if cfg.pool_resource in self.store.names()
            else None
        )
        if found is None:
            return DemonstrationPool(prompt_resource=cfg.prompt_resource), None
        return DemonstrationPool.from_version(found), found.version


def _demonstration(example: Example) -> Demonstration:
    return Demonstration(
        values=example.values,
        response=example.response.strip("\n"),
        reward=float(example.reward or 0.0),
        outcome=response_class(example.response),
        source="human" if example.model == "human" else "model",
        rollout_id=example.rollout_id,
        triplet_id=example.triplet_id,
        prompt_version=example.version,
        created_at=example.created_at,
    )
