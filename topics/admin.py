"""Create the topic catalogue on a cluster, idempotently."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from agentstream.settings import Settings
from agentstream.topics.catalogue import CATALOGUE, TopicSpec

logger = logging.getLogger(__name__)

Outcome = Literal["created", "exists", "mismatch"]


@dataclass(frozen=True)
class TopicStatus:
    name: str
    partitions: int
    cleanup_policy: str
    outcome: Outcome
    detail: str = ""


def topic_config(settings: Settings, spec: TopicSpec) -> dict[str, str]:
    """The topic-level configuration ``ensure_topics`` creates ``spec`` with.

    ``min.insync.replicas`` comes from ``settings.min_insync_replicas`` for every topic alike (event
    topics, control-plane topics, the stream workers' changelogs), so an ``acks=all`` write is only
    acknowledged once that many replicas hold it; unset, the broker's default applies.
    """
    config = spec.config()
    if settings.min_insync_replicas is not None:
        config["min.insync.replicas"] = str(settings.min_insync_replicas)
    return config


def ensure_topics(
    settings: Settings, specs: tuple[TopicSpec, ...] = CATALOGUE, timeout: float = 15.0
) -> list[TopicStatus]:
    """Create missing topics; report existing ones whose partition count differs from the catalogue.

    Safe to run any number of times. Raises ``KafkaException`` if the cluster is unreachable.
    """
    admin = AdminClient(settings.admin_config())
    existing = admin.list_topics(timeout=timeout).topics
    wanted = {settings.topic(spec.name): spec for spec in specs}
    to_create = [
        NewTopic(
            name,
            num_partitions=spec.partition_count(settings.partitions),
            replication_factor=settings.replication_factor,
            config=topic_config(settings, spec),
        )
        for name, spec in wanted.items()
        if name not in existing
    ]
    created: set[str] = set()
    if to_create:
        for name, future in admin.create_topics(to_create, request_timeout=timeout).items():
            try:
                future.result()
                created.add(name)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race: fine
                    raise
        existing = admin.list_topics(timeout=timeout).topics
    statuses = []
    outcome: Outcome
    for name, spec in wanted.items():
        want = spec.partition_count(settings.partitions)
        have = len(existing[name].partitions) if name in existing else 0
        if name in created:
            outcome, detail = "created", ""
        elif have == want:
            outcome, detail = "exists", ""
        else:
            outcome, detail = "mismatch", f"has {have} partitions, catalogue says {want}"
            logger.warning("Topic %s %s; keys may map to other partitions than expected", name, detail)
        statuses.append(TopicStatus(name, have, spec.cleanup_policy, outcome, detail))
    return statuses
