"""Worker roles: which stages, tables, changelog topics and consumer group each role gets."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest

from streams.identity.engine import MemoryStore
from streams.tables import ChangelogBuffer, buffered_table_class
from streams.worker import chains_for, stages_for, stages_for_topics
from tests.support.pipeline import e2e_topology
from topology.acl import worker_group_id
from topology.model import IDENTIFIED, MPI_REVIEW, ROLE_STAGES, STAGES, Topology

BASE_APP_ID = "hospital-worker"


def _topology() -> Topology:
    return Topology.model_validate(e2e_topology("roles", None, Path("out")))


def _app(role: str) -> faust.App:
    return faust.App(worker_group_id(BASE_APP_ID, role), store="memory://",
                     Table=buffered_table_class(ChangelogBuffer(), BASE_APP_ID))


@pytest.mark.parametrize("role", sorted(ROLE_STAGES))
def test_each_role_builds_its_stages_in_pipeline_order(role: str) -> None:
    app = _app(role)
    stages = stages_for(app, _topology(), None if role == "route" else MemoryStore(), role=role)  # type: ignore[arg-type]
    assert tuple(s.name for s in stages) == ROLE_STAGES[role]
    expected = {"all": ["normalize+dedupe+identity", "route"], "identify": ["normalize+dedupe+identity"],
                "route": ["route"]}[role]
    assert [c.name for c in chains_for(stages)] == expected


@pytest.mark.parametrize("role", sorted(ROLE_STAGES))
def test_tables_keep_the_changelog_topics_of_the_worker_app_id(role: str) -> None:
    app = _app(role)
    stages_for(app, _topology(), None if role == "route" else MemoryStore(), role=role)  # type: ignore[arg-type]
    expected = {"dedupe": f"{BASE_APP_ID}-dedupe-seen-changelog", "route": f"{BASE_APP_ID}-consent-state-changelog"}
    want = {topic for stage, topic in expected.items() if stage in ROLE_STAGES[role]}
    assert app.tables.changelog_topics == want


def test_route_workers_are_a_consumer_group_of_their_own() -> None:
    assert ROLE_STAGES["all"] == STAGES  # every stage, once, in pipeline order
    assert ROLE_STAGES["identify"] + ROLE_STAGES["route"] == STAGES
    assert worker_group_id(BASE_APP_ID, "all") == worker_group_id(BASE_APP_ID, "identify") == BASE_APP_ID
    assert worker_group_id(BASE_APP_ID, "route") == f"{BASE_APP_ID}-route"


def test_a_role_with_identity_needs_the_mpi_index() -> None:
    with pytest.raises(ValueError, match="'identify' role runs identity"):
        stages_for(_app("identify"), _topology(), None, role="identify")


def test_lag_is_watched_on_the_topics_the_role_consumes() -> None:
    topo = _topology()
    raw = topo.raw_topics()
    assert stages_for_topics(topo) == [[*raw, MPI_REVIEW], [IDENTIFIED]]
    assert stages_for_topics(topo, "identify") == [[*raw, MPI_REVIEW]]
    assert stages_for_topics(topo, "route") == [[IDENTIFIED]]
