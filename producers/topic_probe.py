"""Is Kafka back, with our topics? Their topic ids, asked for while the delivery thread waits out
an outage (a topic id that changed means the broker lost its log: see :mod:`.replay_window`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from agentstream.topics.auth import auth_problem


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
    errors: list[KafkaError] = []
    conf: dict[str, Any] = {**admin_config, "socket.timeout.ms": 500, "error_cb": errors.append}
    admin = AdminClient(conf)
    try:
        metadata = admin.list_topics(timeout=0.5)
    except KafkaException as e:
        if str(admin_config.get("security.protocol", "")).upper().startswith("SASL"):
            # a rejected login reaches error_cb only (after the TLS and SCRAM round trips): wait for
            # it briefly, so the caller can tell "wrong password" from "Kafka is down"
            admin.poll(1.0)
            refused = [error for error in errors if auth_problem(error, admin_config) is not None]
            if refused:
                raise KafkaException(refused[0]) from e
        raise
    missing = [t for t in topics if t not in metadata.topics]
    if missing:
        raise MissingTopics(missing)
    futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=2.0)
    return {name: str(f.result().topic_id) for name, f in futures.items()}
