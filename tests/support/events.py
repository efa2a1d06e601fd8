"""Synthetic ClinicalEvents and Kafka helpers for sink and e2e tests (no PHI: made-up values)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, Producer

from schemas.envelope import encode_event, schema_header
from schemas.headers import EVENT_ID, SOURCE, encode
from tests.support.kafka import TEST_CONSUMER_CONF


def make_event(i: int, destination: str = "x", *, event_id: str | None = None, euid: str | None = None,
               **overrides: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"test-event-{destination}-{i}")),
        "event_type": "ADT^A01",
        "source": "test-feed",
        "source_message_id": f"MSG{i:06d}",
        "patient": {"euid": euid or f"EUID-{i % 17:04d}",
                    "identifiers": [{"system": "urn:test:mrn", "value": f"MRN{i:06d}", "type": "MR"}]},
        "occurred_at": "2024-05-01T10:00:00Z",
        "received_at": "2024-05-01T10:00:01.250Z",
        "resources": [{"resourceType": "Patient", "id": f"p{i}", "gender": "unknown"},
                      {"resourceType": "Encounter", "id": f"e{i}", "status": "in-progress"}],
        "destination": destination,
        "purpose": "TREAT",
        "lineage": {"topic": "identified.events", "partition": 0, "offset": i, "stages": ["normalize", "route"]},
    }
    ev.update(overrides)
    return ev


Header = tuple[str, bytes]


def produce(bootstrap: str, topic: str, records: Iterable[bytes | dict[str, Any] | tuple[bytes, list[Header]]], *,
            key: Callable[[int], bytes | None] = lambda i: f"k{i % 7}".encode()) -> dict[int, int]:
    """Produce encoded events (dicts are encoded with the headers the stages send; bytes go as they
    are, without headers; a ``(bytes, headers)`` pair goes with those headers).

    Returns partition -> next offset (last delivered offset + 1) from the delivery reports:
    the embedded broker's ListOffsets (high watermark) answers are not reliable.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    next_offsets: dict[int, int] = {}
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            next_offsets[msg.partition()] = max(next_offsets.get(msg.partition(), 0), msg.offset() + 1)

    for i, rec in enumerate(records):
        if isinstance(rec, dict):
            value = encode_event(rec)
            headers = [*encode([(EVENT_ID, rec["event_id"]), (SOURCE, rec["source"])]), schema_header()]
        elif isinstance(rec, tuple):
            value, headers = rec
        else:
            value, headers = rec, []
        producer.produce(topic, value=value, key=key(i), headers=headers, on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not errors, f"{remaining} records not delivered to {topic}: {errors[:3]}"
    return next_offsets


def consume_all(bootstrap: str, topic: str, *, expected: int, group: str, timeout_s: float = 30.0,
                match: Callable[[Any], bool] = lambda msg: True) -> list[Any]:
    """Read from the beginning of ``topic`` (fresh group) until ``expected`` messages satisfying
    ``match`` arrived (those are returned) or fail."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, **TEST_CONSUMER_CONF})
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and match(msg):
                out.append(msg)
    finally:
        consumer.close()
    assert len(out) >= expected, f"got {len(out)} of {expected} messages from {topic}"
    return out


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class RunnerThread:
    """Run a SinkRunner-like object (``run(stop_event)``) in a thread; stop and re-raise its error on exit."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None
        self._thread = threading.Thread(target=self._run, name="sink-runner", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.runner.run(self.stop_event)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> RunnerThread:
        self._thread.start()
        return self

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"runner died: {self.error!r}") from self.error

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "runner did not stop within 30s"
        self.check()
