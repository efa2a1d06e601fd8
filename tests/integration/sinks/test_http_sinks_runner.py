"""FHIR sink behind the SinkRunner: retries, DLQ of a refused event, idempotent replay."""

from __future__ import annotations

from collections.abc import Callable

from connectors.sinks.registry import create_sink
from connectors.sinks.runner import SinkRunner
from schemas.headers import as_dict
from tests.integration.sinks.conftest import Dest
from tests.support.events import RunnerThread, consume_all, make_event, produce, wait_until
from tests.support.fhir_server import FhirTestServer
from topology.model import SinkSpec


def test_fhir_sink_through_runner(dest: Dest, unique_name: Callable[[str], str]) -> None:
    events = [make_event(i, dest.name) for i in range(40)]
    bad = make_event(99, dest.name, resources=[{"resourceType": "Patient", "id": "bad", "gender": "bogus"}])
    produce(dest.bootstrap, dest.topic, [*events[:20], bad, *events[20:]], key=lambda i: b"one-patient")

    with FhirTestServer() as server:
        def runner(group: str) -> SinkRunner:
            spec = SinkSpec(kind="fhir", options={"base_url": server.base_url, "breaker_reset_s": 0.5})
            sink = create_sink(spec, dest.name)
            return SinkRunner(sink, topic=dest.topic, settings=dest.settings, group_id=group, poll_timeout_s=0.2,
                              initial_backoff_s=0.05)

        server.fail_next(5, 503)  # more than the in-call retries: the runner's backoff loop takes over
        with RunnerThread(runner(unique_name("g"))) as rt:
            wait_until(lambda: (rt.check(), len(server.resources) >= 80)[1], 30, "80 resources")
            wait_until(lambda: rt.runner.stats.dlq == 1, 10, "the refused event in the DLQ")
        assert rt.result.retries >= 1 and rt.result.delivered == 40
        assert len(server.resources) == 80 and ("Patient", "bad") not in server.resources
        versions = dict(server.versions)

        # Replay everything with a fresh group: idempotent PUTs, no new versions.
        with RunnerThread(runner(unique_name("g"))) as rt2:
            wait_until(lambda: (rt2.check(), rt2.runner.stats.delivered >= 40)[1], 30, "replay")
        assert server.versions == versions

    dlq = consume_all(dest.bootstrap, "dlq.sink", expected=1, group=unique_name("dlq"),
                      match=lambda m: as_dict(m.headers()).get("origin-topic") == dest.topic)
    headers = as_dict(dlq[0].headers())
    assert headers["error-class"] == "SinkRejected" and headers["origin-offset"] == "20"
    assert headers["clinstream-event-id"] == bad["event_id"]
