"""Consumer lag: how far each consumer group's committed offsets trail the partitions' ends.

One reading serves both the ``/metrics`` collectors of the consuming processes and
``agentstream status``. A group that has committed nothing on a partition yet is counted from the
partition's start (every consumer of ours reads from ``earliest``), so records produced before any
consumer ran show as lag too.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.core import GaugeMetricFamily

from agentstream.process.metrics import CallbackCollector
from agentstream.settings import Settings
from agentstream.topics.io import high_watermarks


@dataclass(frozen=True)
class PartitionLag:
    """One partition of one group: its committed offset (None: none yet) and the partition's range."""

    group: str
    topic: str
    partition: int
    committed: int | None
    low: int
    high: int

    @property
    def lag(self) -> int:
        """Records the group has still to consume (never negative)."""
        position = self.committed if self.committed is not None else self.low
        return max(0, self.high - max(position, self.low))


class LagReader:
    """Reads consumer lag: committed offsets through an admin client, partition ends from Fetch
    responses (:func:`~agentstream.topics.io.high_watermarks`: ListOffsets trails the true end on
    some brokers, the embedded one included). Keep one per process: connections are reused.

    Args:
        settings: resolved (bootstrap servers set).
        timeout: seconds per request; a slow or absent broker raises ``KafkaException`` or
            ``TimeoutError``.
    """

    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        self._admin = AdminClient(settings.admin_config())
        # assign() only, never subscribe: this consumer joins no group and commits nothing
        config = settings.consumer_config(f"agentstream-lag-reader-{uuid.uuid4().hex[:8]}")
        self._consumer = Consumer({**config, "enable.partition.eof": False})
        self._lock = threading.Lock()  # one consumer: one reading at a time
        self._timeout = timeout

    def groups(self) -> list[str]:
        """The consumer groups the cluster knows."""
        result = self._admin.list_consumer_groups(request_timeout=self._timeout).result(self._timeout)
        return sorted(listing.group_id for listing in result.valid)

    def lag(self, groups: Mapping[str, Sequence[str] | None]) -> list[PartitionLag]:
        """Lag per partition of each group: ``groups`` maps a group id to the topics it consumes
        (every partition of them is reported, committed or not), or to None for "the partitions it
        has committed offsets on". Topics missing from the cluster are left out."""
        metadata = self._admin.list_topics(timeout=self._timeout).topics
        committed: dict[tuple[str, str, int], int | None] = {}
        for group, topics in groups.items():
            wanted = None
            if topics is not None:
                wanted = [
                    TopicPartition(topic, p)
                    for topic in topics
                    if topic in metadata
                    for p in sorted(metadata[topic].partitions)
                ]
                if not wanted:
                    continue
            request = [ConsumerGroupTopicPartitions(group, wanted)]
            futures = self._admin.list_consumer_group_offsets(request, request_timeout=self._timeout)
            for future in futures.values():
                for tp in future.result(self._timeout).topic_partitions or []:
                    if tp.topic in metadata:
                        committed[(group, tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        partitions = sorted({(topic, p) for _, topic, p in committed})
        with self._lock:
            low = {
                tp: self._consumer.get_watermark_offsets(TopicPartition(*tp), timeout=self._timeout)[0]
                for tp in partitions
            }
            high = high_watermarks(self._consumer, partitions, self._timeout)
        return [
            PartitionLag(group, topic, p, offset, low[(topic, p)], high[(topic, p)])
            for (group, topic, p), offset in sorted(committed.items())
        ]

    def close(self) -> None:
        """Close the consumer (the admin client needs no closing)."""
        self._consumer.close()


def consumer_lag(
    settings: Settings, groups: Mapping[str, Sequence[str] | None], timeout: float = 5.0
) -> list[PartitionLag]:
    """Lag per partition of ``groups`` (see :meth:`LagReader.lag`) on the cluster of ``settings``
    (resolved: bootstrap servers set)."""
    reader = LagReader(settings, timeout)
    try:
        return reader.lag(groups)
    finally:
        reader.close()


def total_by_group(lags: Iterable[PartitionLag]) -> dict[str, int]:
    """The summed lag of each group."""
    totals: dict[str, int] = {}
    for lag in lags:
        totals[lag.group] = totals.get(lag.group, 0) + lag.lag
    return totals


def lag_family(lags: Iterable[PartitionLag]) -> GaugeMetricFamily:
    """``agentstream_consumer_lag_records{group,topic,partition}``."""
    family = GaugeMetricFamily(
        "agentstream_consumer_lag_records",
        "Records a consumer group has still to consume, per partition.",
        labels=["group", "topic", "partition"],
    )
    for lag in lags:
        family.add_metric([lag.group, lag.topic, str(lag.partition)], lag.lag)
    return family


def lag_collector(settings: Settings, groups: Mapping[str, Sequence[str] | None]) -> CallbackCollector:
    """A collector of ``groups``' lag, read on each scrape through one admin client (made on the
    first scrape, so a process that is never scraped never connects)."""
    reader: list[LagReader] = []

    def collect() -> Iterable[GaugeMetricFamily]:
        if not reader:
            reader.append(LagReader(settings))
        return [lag_family(reader[0].lag(groups))]

    return CallbackCollector("consumer lag", collect)
