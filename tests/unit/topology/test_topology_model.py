from pathlib import Path

import pytest

from topology.model import REDRIVES, TopologyError, load_topology, parse_topology

EXAMPLES = Path(__file__).resolve().parents[3] / "topology" / "examples"


def test_shipped_examples_are_valid():
    for f in sorted(EXAMPLES.glob("*.yaml")):
        topo = load_topology(f)
        assert topo.destinations, f


def test_derived_topics_cover_the_contract():
    topo = load_topology(EXAMPLES / "demo.yaml")
    topics = topo.derived_topics()
    for name in ("raw.hl7v2.adt-feed", "canonical.events", "dedup.events", "identified.events", "mpi.links",
                 "mpi.patients", "consent.decisions", "audit.disclosures", REDRIVES, "dlq.ingest", "dlq.normalize",
                 "dest.ehr-replica"):
        assert name in topics
    assert topics["mpi.patients"].cleanup_policy == "compact"
    parts, rf, conf = topo.resolved(topics["canonical.events"])
    assert (parts, rf) == (4, 1) and conf["retention.ms"] == "604800000"
    assert "retention.ms" not in topo.resolved(topics["consent.decisions"])[2]


def test_topic_override_wins():
    topo = parse_topology("name: t\ntopics:\n  - {name: canonical.events, partitions: 12, retention_ms: 1000}\n")
    assert topo.resolved(topo.derived_topics()["canonical.events"])[0] == 12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ndestinations:\n  - name: Bad Name\n", "destinations[0](Bad Name).name"),
        ("name: x\ndestinations:\n  - name: ok\n    purpose: SELLING\n", "destinations[0](ok).purpose"),
        ("name: x\nsources: [{name: a, kind: tcp}]\n", "sources[0](a).kind"),
        ("name: x\ndestinations:\n  - name: a\n    allow: 5\n", "destinations[0](a).allow"),
        ("name: x\nbogus: 1\n", "bogus"),
        ("sources: []\n", "name"),
    ],
)
def test_invalid_topology_names_file_and_key_path(text: str, expected: str):
    with pytest.raises(TopologyError) as err:
        parse_topology(text, "topo.yaml")
    assert "topo.yaml" in str(err.value) and expected in str(err.value)


def test_yaml_syntax_error_names_line_and_column():
    with pytest.raises(TopologyError, match=r"topo.yaml:\d+:\d+: not valid YAML"):
        parse_topology("name: x\nsources: [\n", "topo.yaml")


def test_duplicate_names_rejected():
    with pytest.raises(TopologyError, match="duplicate destinations"):
        parse_topology("name: x\ndestinations: [{name: a}, {name: a}]\n")


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(TopologyError, match="cannot read topology"):
        load_topology(tmp_path / "nope.yaml")
