"""`topology plan/apply` against a real broker."""

from confluent_kafka.admin import AdminClient

from topology.model import parse_topology
from topology.plan import TopologyApplyError, apply, plan


def test_plan_then_apply_converges(kafka_bootstrap: str, unique_name):
    src, dest = unique_name("src"), unique_name("dst")
    topo = parse_topology(
        f"name: t\ntopic_defaults: {{partitions: 2}}\n"
        f"sources: [{{name: {src}, kind: mllp}}]\n"
        f"destinations: [{{name: {dest}}}]\n"
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    mine = (f"raw.hl7v2.{src}", f"dest.{dest}")  # the shared cluster also holds other tests' internal topics
    changes = [c for c in plan(topo, admin) if c.topic in mine]
    assert {c.topic for c in changes if c.action == "create"} == set(mine)
    apply(changes, admin)
    md = admin.list_topics(timeout=10)
    assert len(md.topics[f"dest.{dest}"].partitions) == 2
    assert not [c for c in plan(topo, admin) if c.topic in mine]
    # growing partitions is planned as add-partitions and applied
    grown = parse_topology(
        f"name: t\ntopic_defaults: {{partitions: 2}}\n"
        f"sources: [{{name: {src}, kind: mllp}}]\n"
        f"destinations: [{{name: {dest}}}]\n"
        f"topics: [{{name: dest.{dest}, partitions: 3}}]\n"
    )
    grow = [c for c in plan(grown, admin) if c.topic == f"dest.{dest}"]
    assert [c.action for c in grow] == ["add-partitions"]
    try:
        apply(grow, admin)
    except TopologyApplyError as exc:
        # the embedded broker does not implement CreatePartitions: the error must say so, naming the topic
        assert f"dest.{dest}" in str(exc) and "cannot add partitions" in str(exc)
    else:
        assert len(admin.list_topics(timeout=10).topics[f"dest.{dest}"].partitions) == 3
