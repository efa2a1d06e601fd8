"""Identity through Kafka: an ADT^A40 merge re-keys later events of the retired patient."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from schemas import headers as H
from schemas.envelope import decode_event
from tests.e2e.test_pipeline import send_all
from tests.support.pipeline import Pipeline, e2e_topology, wait_until
from tests.support.topics import read_all
from tests.unit.identity.test_identity_stage import adt

pytestmark = pytest.mark.timeout(300)


def test_merge_message_rekeys_events(e2e_bootstrap: str, tmp_path: Path, unique_name):
    name = unique_name("m").replace("_", "-")[:24].rstrip("-")
    p = Pipeline(e2e_bootstrap, tmp_path / "run", e2e_topology(name, None, tmp_path / "out"))
    try:
        port = p.start_source()
        p.start_worker()
        messages = [
            adt("A01", "AAA", "DOE", "JANE", "19800101", f"{name}-1"),
            adt("A01", "BBB", "ROE", "MARY", "19700303", f"{name}-2"),
            adt("A40", "BBB", "ROE", "MARY", "19700303", f"{name}-3", mrg="AAA"),
            adt("A08", "AAA", "DOE", "JANE", "19800101", f"{name}-4"),
        ]
        # one connection, in order: the merge must be resolved before the later update
        assert asyncio.run(send_all(port, messages, connections=1)) == ["AA"] * 4

        def identified() -> dict[str, dict]:
            out = {}
            for m in read_all(p.bootstrap, "identified.events"):
                if H.as_dict(m.headers()).get(H.SOURCE) == p.source_name:
                    ev = decode_event(m.value())
                    out[ev["source_message_id"]] = {"euid": ev["patient"]["euid"], "key": m.key()}
            return out

        assert wait_until(lambda: len(identified()) == 4, 120), p.logs()
        got = identified()
        prior, survivor = got[f"{name}-1"]["euid"], got[f"{name}-2"]["euid"]
        assert prior != survivor
        assert got[f"{name}-3"]["euid"] == survivor
        # the retired patient's later update is keyed (partitioned) by the surviving EUID
        assert got[f"{name}-4"]["euid"] == survivor and got[f"{name}-4"]["key"] == survivor.encode()
        merges = [orjson.loads(m.value()) for m in read_all(p.bootstrap, "mpi.links")]
        assert any(x.get("type") == "merge" and x["from_euid"] == prior and x["to_euid"] == survivor for x in merges)
    finally:
        p.stop()
