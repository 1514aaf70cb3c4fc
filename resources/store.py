"""Resources: versioned prompt templates, LLM endpoints and model checkpoints, kept as logs.

    store = ResourceStore(settings).open()
    v1 = store.publish("support-prompt", template="Ticket: {{ticket}}\\nQueue:", labels=["production"])
    v2 = store.publish("support-prompt", template=..., parent_version=1, labels=["candidate"])
    store.label("support-prompt", "production", 2)      # promote
    store.rollback("support-prompt")                     # production back to where it was before

Two compacted topics hold everything: ``resources`` (one immutable ``ResourceVersion`` per
``name/version`` key) and ``resource-labels`` (where each label points, moved by appending a
``ResourceLabel``). A store follows both from the beginning, so every runner, trainer and CLI call
sees the same state, and changes reach runners while they run.

Versions are immutable: the first record of a ``name/version`` in the log wins. Two publishers that
race for the same number both see which record came first; the loser publishes again under the
next number (:meth:`ResourceStore.publish` does this).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from agentstream.schemas import (
    PRODUCTION,
    ResourceKind,
    ResourceLabel,
    ResourceVersion,
    TemplateError,
    check_template,
)
from agentstream.schemas.ids import now_us
from agentstream.schemas.resource_version import content_hash
from agentstream.settings import Settings
from agentstream.topics.catalogue import RESOURCE_LABELS, RESOURCES, TopicSpec
from agentstream.topics.io import RecordWriter, TopicReader

logger = logging.getLogger(__name__)

__all__ = ["ResourceError", "ResourceState", "ResourceStore", "pick_label", "traffic_bucket"]


class ResourceError(ValueError):
    """A resource operation that cannot be done: unknown name, version or label, bad template."""


@dataclass
class ResourceState:
    """What is known of one resource: its versions and where its labels point."""

    name: str
    versions: dict[int, ResourceVersion] = field(default_factory=dict)
    labels: dict[str, ResourceLabel] = field(default_factory=dict)
    #: every label move seen, oldest first (the topic is compacted: older moves may be gone)
    history: list[ResourceLabel] = field(default_factory=list)

    @property
    def latest(self) -> int:
        return max(self.versions, default=0)

    def label_version(self, label: str) -> int | None:
        event = self.labels.get(label)
        return event.version if event is not None else None

    def labels_of(self, version: int) -> list[str]:
        return sorted(label for label, event in self.labels.items() if event.version == version)


def traffic_bucket(key: str, resource_name: str) -> float:
    """A stable number in [0, 1) for a task key: the same key always lands in the same arm."""
    digest = hashlib.blake2b(f"{resource_name}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick_label(weights: Mapping[str, float], available: Iterable[str], bucket: float) -> str | None:
    """The label a bucket falls into among the weighted labels that exist; ``None`` if none does.

    Weights of missing labels are dropped and the rest renormalised, so with no candidate all
    traffic goes to production.
    """
    present = set(available)
    arms = [(label, w) for label, w in weights.items() if label in present and w > 0]
    total = sum(w for _, w in arms)
    if not arms or total <= 0:
        return None
    edge = 0.0
    for label, weight in arms:
        edge += weight / total
        if bucket < edge:
            return label
    return arms[-1][0]


class ResourceStore:
    """Publish, label and read resource versions; follows the resource topics live.

    Args:
        settings: where Kafka is (resolved from the running stack when unset).
        follow: keep reading in a background thread after :meth:`open` (runners, controllers);
            ``False`` reads to the end once per :meth:`refresh` (CLI, scripts).
        who: recorded as ``created_by`` / ``moved_by``.
    """

    def __init__(self, settings: Settings, *, follow: bool = True, who: str = "") -> None:
        self.settings = settings.resolved()
        self.follow = follow
        self.who = who
        self._lock = threading.Condition()
        self._resources: dict[str, ResourceState] = {}
        self._listeners: list[Callable[[ResourceVersion | ResourceLabel], None]] = []
        self._reader: TopicReader | None = None
        self._writer = RecordWriter(self.settings)

    # ---- lifecycle ------------------------------------------------------------------------------------
    def open(self, timeout: float = 15.0) -> ResourceStore:
        """Read both topics to their end (and keep following when ``follow``)."""
        if self._reader is not None:
            return self
        if self.follow:
            self._reader = TopicReader(
                self.settings, (RESOURCES, RESOURCE_LABELS), self._apply, name="resources"
            )
            self._reader.start()
            if not self._reader.wait_caught_up(timeout):
                raise TimeoutError(f"resource topics not read to the end within {timeout}s")
        else:
            self.refresh(timeout)
        return self

    def refresh(self, timeout: float = 15.0) -> None:
        """Catch up with the topics now (only needed without ``follow``)."""
        if self.follow and self._reader is not None:
            return
        reader = TopicReader(self.settings, (RESOURCES, RESOURCE_LABELS), self._apply, name="resources")
        reader.read_to_end(timeout)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._writer.close()

    def __enter__(self) -> ResourceStore:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def on_change(self, callback: Callable[[ResourceVersion | ResourceLabel], None]) -> None:
        """Call ``callback(record)`` for every version or label move applied from now on."""
        with self._lock:
            self._listeners.append(callback)

    # ---- reads ---------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._resources)

    def state(self, name: str) -> ResourceState:
        with self._lock:
            state = self._resources.get(name)
            if state is None:
                raise ResourceError(f"unknown resource {name!r}; known: {sorted(self._resources)}")
            return ResourceState(name, dict(state.versions), dict(state.labels), list(state.history))

    def get(self, name: str, ref: int | str) -> ResourceVersion:
        """A version by number (``3``, ``"3"``, ``"v3"``) or by label (``"production"``)."""
        state = self.state(name)
        version = self._version_of(state, ref)
        return state.versions[version]

    def find(self, name: str, ref: int | str) -> ResourceVersion | None:
        """Like :meth:`get`, but ``None`` instead of an error (hot paths)."""
        with self._lock:
            state = self._resources.get(name)
            if state is None:
                return None
            try:
                return state.versions.get(self._version_of(state, ref))
            except ResourceError:
                return None

    def labels(self, name: str) -> dict[str, int]:
        state = self.state(name)
        return {label: e.version for label, e in state.labels.items() if e.version is not None}

    def diff(self, name: str, a: int | str, b: int | str) -> str:
        """A unified diff of two versions' templates (or URIs and configs)."""
        va, vb = self.get(name, a), self.get(name, b)
        return "".join(
            difflib.unified_diff(
                _describe(va).splitlines(keepends=True),
                _describe(vb).splitlines(keepends=True),
                fromfile=f"{name} v{va.version}",
                tofile=f"{name} v{vb.version}",
            )
        )

    def wait_for(self, predicate: Callable[[ResourceStore], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(store)`` holds (it is re-checked after every applied record)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.follow:
                self.refresh()
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._lock:
                self._lock.wait(min(remaining, 0.2))

    # ---- writes --------------------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        *,
        template: str | None = None,
        uri: str | None = None,
        kind: ResourceKind | str | None = None,
        variables: list[str] | None = None,
        config: Mapping[str, str] | None = None,
        parent_version: int | None = None,
        lineage: Mapping[str, str] | None = None,
        labels: Iterable[str] = (),
        reason: str = "",
        force_new: bool = False,
        timeout: float = 15.0,
    ) -> ResourceVersion:
        """Publish a new immutable version; returns it once it is in the log (and labelled).

        A prompt template's ``{{variables}}`` are checked against ``variables`` (``None``: what the
        template uses). Publishing content identical to the latest version returns that version,
        unless ``force_new`` (a new version with its own lineage, e.g. a trainer's winner).
        """
        if kind is None:
            kind = ResourceKind.PROMPT_TEMPLATE if template is not None else ResourceKind.LLM
        kind = ResourceKind(kind)
        if kind is ResourceKind.PROMPT_TEMPLATE:
            if template is None:
                raise ResourceError("a prompt_template needs a template")
            try:
                variables = check_template(template, variables)
            except TemplateError as e:
                raise ResourceError(f"{name}: {e}") from e
        elif uri is None:
            raise ResourceError(f"a {kind} resource needs a uri")
        config = {str(k): str(v) for k, v in (config or {}).items()}
        digest = content_hash(kind.value, template, uri, config)
        existing = self._existing(name)
        if parent_version is not None and existing is not None and parent_version not in existing.versions:
            raise ResourceError(f"{name} has no version {parent_version} to derive from")
        if existing is not None and existing.versions and not force_new:
            latest = existing.versions[existing.latest]
            if latest.content_hash == digest:
                for label in labels:
                    if existing.label_version(label) != latest.version:
                        self.label(
                            name, label, latest.version, reason=reason or "publish (unchanged content)"
                        )
                return latest
        deadline = time.monotonic() + timeout
        number = (existing.latest if existing is not None else 0) + 1
        while True:
            record = ResourceVersion(
                resource_name=name,
                version=number,
                kind=kind,
                template=template,
                variables=list(variables or []),
                uri=uri,
                config=config,
                parent_version=parent_version,
                lineage={str(k): str(v) for k, v in (lineage or {}).items()},
                content_hash=digest,
                created_at=now_us(),
                created_by=self.who,
            )
            self._writer.write(RESOURCES, f"{name}/{number}", record, timeout)
            stored = self._await(partial(self._stored_version, name, number), deadline)
            if stored is None:
                raise TimeoutError(f"{name} v{number} did not come back from the resources topic")
            if stored.created_at == record.created_at and stored.content_hash == digest:
                break
            number += 1  # another publisher got this number first: take the next
        for label in labels:
            self.label(name, label, number, reason=reason or "published")
        return record

    def label(
        self,
        name: str,
        label: str,
        version: int | str | None,
        *,
        reason: str = "",
        decision_id: str | None = None,
        timeout: float = 15.0,
    ) -> ResourceLabel:
        """Point ``label`` at ``version`` (a number, or another label's version); ``None`` removes it."""
        state = self.state(name)
        target = self._version_of(state, version) if version is not None else None
        event = ResourceLabel(
            resource_name=name,
            label=label,
            version=target,
            previous_version=state.label_version(label),
            reason=reason,
            decision_id=decision_id,
            moved_at=now_us(),
            moved_by=self.who,
        )
        self._writer.write(RESOURCE_LABELS, f"{name}/{label}", event, timeout)
        deadline = time.monotonic() + timeout
        if self._await(lambda: self._seen_label(name, label, event.moved_at), deadline) is None:
            raise TimeoutError(f"label move {name}/{label} did not come back from the topic")
        return event

    def rollback(
        self,
        name: str,
        label: str = PRODUCTION,
        to: int | str | None = None,
        *,
        reason: str = "",
        **kwargs: Any,
    ) -> ResourceLabel:
        """Move ``label`` back to where it pointed before its last move (or to ``to``)."""
        state = self.state(name)
        current = state.labels.get(label)
        if current is None or current.version is None:
            raise ResourceError(f"{name} has no {label!r} label to roll back")
        target = self._version_of(state, to) if to is not None else current.previous_version
        if target is None:
            raise ResourceError(f"{name}/{label} has no earlier version to roll back to; pass one explicitly")
        return self.label(name, label, target, reason=reason or f"rollback from v{current.version}", **kwargs)

    # ---- internals -----------------------------------------------------------------------------------
    def _apply(self, spec: TopicSpec, key: bytes | None, record: Any) -> None:
        with self._lock:
            if isinstance(record, ResourceVersion):
                state = self._resources.setdefault(record.resource_name, ResourceState(record.resource_name))
                first = state.versions.get(record.version)
                if first is not None:
                    if first.created_at != record.created_at:
                        logger.warning(
                            "%s v%d published twice; the first one stands (versions are immutable)",
                            record.resource_name,
                            record.version,
                        )
                    return
                state.versions[record.version] = record
            elif isinstance(record, ResourceLabel):
                state = self._resources.setdefault(record.resource_name, ResourceState(record.resource_name))
                if any(
                    e.label == record.label and e.moved_at == record.moved_at for e in state.history[-50:]
                ):
                    return  # the same move, delivered again
                state.history.append(record)
                if record.version is None:
                    state.labels.pop(record.label, None)
                else:
                    state.labels[record.label] = record
            else:
                return
            listeners = list(self._listeners)
            self._lock.notify_all()
        for listener in listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("resource listener failed")

    def _existing(self, name: str) -> ResourceState | None:
        if not self.follow:
            self.refresh()
        with self._lock:
            return self._resources.get(name)

    def _stored_version(self, name: str, number: int) -> ResourceVersion | None:
        with self._lock:
            state = self._resources.get(name)
            return state.versions.get(number) if state is not None else None

    def _seen_label(self, name: str, label: str, moved_at: int) -> bool | None:
        with self._lock:
            state = self._resources.get(name)
            seen = state is not None and any(
                e.label == label and e.moved_at == moved_at for e in state.history
            )
            return True if seen else None

    def _await(self, lookup: Callable[[], Any], deadline: float) -> Any:
        while True:
            if not self.follow:
                self.refresh()
            found = lookup()
            if found is not None or time.monotonic() >= deadline:
                return found
            with self._lock:
                self._lock.wait(0.05)

    def _version_of(self, state: ResourceState, ref: int | str | None) -> int:
        if isinstance(ref, int):
            number = ref
        elif isinstance(ref, str) and ref.lstrip("v").isdigit():
            number = int(ref.lstrip("v"))
        elif isinstance(ref, str):
            labelled = state.label_version(ref)
            if labelled is None:
                raise ResourceError(f"{state.name} has no label {ref!r}; labels: {sorted(state.labels)}")
            number = labelled
        else:
            raise ResourceError(f"not a version or label: {ref!r}")
        if number not in state.versions:
            raise ResourceError(f"{state.name} has no version {number}; latest is v{state.latest}")
        return number


def _describe(version: ResourceVersion) -> str:
    if version.template is not None:
        return version.template if version.template.endswith("\n") else version.template + "\n"
    lines = [f"uri: {version.uri}\n"] + [f"{k}: {v}\n" for k, v in sorted(version.config.items())]
    return "".join(lines)
