"""Is Kafka back, with our topics? Their topic ids, asked for while the delivery thread waits out
an outage (a topic id that changed means the broker lost its log: see :mod:`.replay_window`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient


class MissingTopics(Exception):
    """Kafka answers, but some of the topics do not exist (yet)."""

    def __init__(self, topics: list[str]) -> None:
        super().__init__(f"topics {topics} are missing")
        self.topics = topics


def topic_ids(admin_config: dict[str, Any], topics: Sequence[str]) -> dict[str, str]:
    """Each topic's id, asked with short timeouts.

    Raises:
        MissingTopics: Kafka is up, but a topic is not there.
        Exception: anything the admin client raises while Kafka is unreachable.
    """
    admin = AdminClient({**admin_config, "socket.timeout.ms": 500})
    metadata = admin.list_topics(timeout=0.5)
    missing = [t for t in topics if t not in metadata.topics]
    if missing:
        raise MissingTopics(missing)
    futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=2.0)
    return {name: str(f.result().topic_id) for name, f in futures.items()}
