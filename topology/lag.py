"""Consumer lag per partition for a group, exported as ``clinstream_consumer_lag_records``.

A background thread compares the group's committed offsets with the high
watermarks; it never joins the group (``committed()`` needs no assignment).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from schemas.metrics import lag_from_watermarks, set_consumer_lag
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


class LagMonitor:
    def __init__(self, settings: KafkaSettings, group: str, topics: Sequence[str], interval_s: float = 10.0) -> None:
        self.group, self.topics, self.interval_s = group, list(topics), interval_s
        self._consumer = Consumer(settings.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lag-{group}", daemon=True)
        self.last: dict[tuple[str, int], int] = {}

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()

    def measure(self) -> dict[tuple[str, int], int]:
        tps: list[TopicPartition] = []
        md = self._consumer.list_topics(timeout=5)
        for topic in self.topics:
            meta = md.topics.get(topic)
            if meta is not None and meta.error is None:
                tps += [TopicPartition(topic, p) for p in meta.partitions]
        if not tps:
            return {}
        committed = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.committed(tps, timeout=5)}
        highs: dict[tuple[str, int], int] = {}
        lows: dict[tuple[str, int], int] = {}
        for tp in tps:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            lows[(tp.topic, tp.partition)], highs[(tp.topic, tp.partition)] = low, high
        lags = lag_from_watermarks(committed, highs, lows)
        set_consumer_lag(self.group, lags)
        return lags

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.last = self.measure()
            except KafkaException as exc:
                log.warning("lag monitor %s: %s", self.group, exc)
