"""`topology acl`: each principal gets only its own topics and groups."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from topology.acl import acl_command, acl_entries, acls_for, add_topology_acl_parser
from topology.model import load_topology, parse_topology

DEMO = Path(__file__).resolve().parents[3] / "topology" / "examples" / "demo.yaml"

TOPOLOGY = """
name: acl-test
sources:
  - {name: adt, kind: mllp}
  - {name: portal, kind: fhir-http, format: fhir}
destinations:
  - {name: billing, purpose: HPAYMT, sink: {kind: ndjson}}
  - {name: research, purpose: HRESCH}
triggers:
  - {name: lab-review, queue: review, task_code: REVIEW}
"""


def grants(principal: str, topology_text: str = TOPOLOGY) -> set[tuple[str, str, str, str]]:
    topo = parse_topology(topology_text)
    return {
        (op, e.resource_type, e.resource_name, e.pattern)
        for e in acl_entries(topo)
        if e.principal == principal
        for op in e.operations
    }


def test_sink_and_team_read_only_their_destination() -> None:
    for principal, group in (
        ("User:clinstream-sink-billing", "clinstream-sink-billing"),
        ("User:team-billing", "team-billing"),
    ):
        g = grants(principal)
        topics_read = {name for op, kind, name, _ in g if kind == "topic" and op == "Read"}
        assert topics_read == {"dest.billing"}
        assert ("Read", "group", group, "literal") in g
        assert not any(name == "dest.research" for _, _, name, _ in g)
    assert {name for op, kind, name, _ in grants("User:team-billing") if op == "Write"} == set()
    assert {name for op, _, name, _ in grants("User:clinstream-sink-billing") if op == "Write"} == {"dlq.sink"}


def test_destination_without_sink_gets_only_the_team_group() -> None:
    assert grants("User:clinstream-sink-research") == set()
    assert ("Read", "topic", "dest.research", "literal") in grants("User:team-research")


def test_sources_write_their_raw_topic_only() -> None:
    g = grants("User:clinstream-source-portal")
    assert {name for op, kind, name, _ in g if op == "Write"} == {"raw.fhir.portal", "dlq.ingest"}
    assert not any(op == "Read" for op, *_ in g)
    assert ("IdempotentWrite", "cluster", "kafka-cluster", "literal") in g


def test_worker_reads_inputs_and_writes_outputs() -> None:
    g = grants("User:clinstream-worker")
    reads = {name for op, kind, name, _ in g if op == "Read" and kind == "topic"}
    writes = {name for op, kind, name, _ in g if op == "Write" and kind == "topic"}
    assert {"raw.hl7v2.adt", "raw.fhir.portal", "canonical.events", "identified.events"} <= reads
    assert not any(t.startswith("dest.") for t in reads)
    assert {"dest.billing", "dest.research", "tasks.review", "audit.disclosures", "dlq.route"} <= writes
    assert not any(t.startswith("raw.") for t in writes)
    assert ("All", "topic", "clinstream-worker-", "prefixed") in g
    assert ("Read", "group", "clinstream-worker", "literal") in g
    assert ("Read", "group", "clinstream-worker-route", "literal") in g  # run worker --role route


def test_every_derived_topic_is_covered() -> None:
    topo = parse_topology(TOPOLOGY)
    granted = {e.resource_name for e in acl_entries(topo) if e.resource_type == "topic"}
    # consumers of mpi.review / audit.disclosures / tasks.* are other teams' business; only writers here.
    assert set(topo.derived_topics()) <= granted


def test_commands_are_kafka_acls_lines() -> None:
    lines = acls_for(parse_topology(TOPOLOGY), principal_prefix="User:")
    assert (
        "kafka-acls.sh --bootstrap-server $KAFKA_BOOTSTRAP_SERVERS --command-config $KAFKA_ADMIN_CONFIG "
        "--add --allow-principal User:team-billing --operation Read --operation Describe --topic dest.billing"
    ) in lines
    assert any(line.endswith("--topic clinstream-worker- --resource-pattern-type prefixed") for line in lines)
    assert any(line.endswith("--operation IdempotentWrite --cluster") for line in lines)


def test_principal_prefix() -> None:
    entries = acl_entries(load_topology(DEMO), principal_prefix="Group:")
    assert entries and all(e.principal.startswith("Group:") for e in entries)


def parse(argv: list[str]) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="clinstream")
    topology_parser = root.add_subparsers(dest="command").add_parser("topology")
    add_topology_acl_parser(topology_parser.add_subparsers(dest="topology_command"))
    return root.parse_args(argv)


def test_cli_prints_commands(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["topology", "acl", "--topology", str(DEMO), "--principal-prefix", "User:"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    grant = "--allow-principal User:clinstream-sink-billing --operation Read --operation Describe --topic dest.billing"
    assert grant in out


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["topology", "acl", "--topology", str(DEMO), "--format", "table"])
    assert acl_command(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["PRINCIPAL", "OPERATIONS", "RESOURCE", "NAME", "PATTERN"]
    assert any(line.split()[:4] == ["User:team-billing", "Read,Describe", "topic", "dest.billing"] for line in out)


def test_cli_bad_topology_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("name: x\nsources: [{name: BAD, kind: mllp}]\n")
    assert acl_command(parse(["topology", "acl", "--topology", str(bad)])) == 2
    assert "sources[0]" in capsys.readouterr().err


def test_app_id_sets_faust_internal_prefix_and_group() -> None:
    g = {
        (op, e.resource_type, e.resource_name, e.pattern)
        for e in acl_entries(parse_topology(TOPOLOGY), app_id="hospital-a")
        if e.principal == "User:clinstream-worker"
        for op in e.operations
    }
    assert ("All", "topic", "hospital-a-", "prefixed") in g
    assert ("Read", "group", "hospital-a", "literal") in g
    assert ("Read", "group", "hospital-a-route", "literal") in g
