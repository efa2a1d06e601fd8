"""Property tests: nothing outside the allow-list ever leaves; denied patients never reach a denying destination."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.route import ConsentState, Delivered, Denied, compile_destination
from tests.unit.route.conftest import KEYS, make_event
from topology.model import DestinationSpec, TransformSpec

RTYPES = ["Patient", "Encounter", "Observation", "Coverage"]
KEY_POOL = [
    "name",
    "family",
    "given",
    "value",
    "valueString",
    "valueQuantity",
    "valueCodeableConcept",
    "code",
    "system",
    "status",
    "identifier",
    "extension",
    "url",
    "text",
    "period",
    "start",
    "end",
    "birthDate",
    "_birthDate",
    "id",
    "reference",
    "subject",
    "foo",
    "Bar",
    "x1",
    "postalCode",
    "address",
    "display",
]
PATH_SEGS = [
    "name",
    "family",
    "value[x]",
    "code",
    "identifier",
    "period",
    "start",
    "birthDate",
    "text",
    "extension",
    "status",
    "subject",
    "reference",
    "id",
    "address",
    "valueQuantity",
    "display",
]

scalars = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.just("1999-12-31"), st.none())
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEY_POOL), children, max_size=4),
    max_leaves=25,
)
resources = st.builds(
    lambda rt, body: {**body, "resourceType": rt},
    st.sampled_from([*RTYPES, "Spaceship"]),
    st.dictionaries(st.sampled_from(KEY_POOL) | st.text(min_size=1, max_size=5), values, max_size=8),
)


@st.composite
def allow_paths(draw: Any) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 6))):
        rt = draw(st.sampled_from(RTYPES))
        segs = draw(st.lists(st.sampled_from([s for s in PATH_SEGS if s != "value[x]"]), min_size=0, max_size=2))
        last = draw(st.sampled_from(PATH_SEGS))
        out.append(".".join([rt, *segs, last]))
    return out


def _seg_ok(seg: str, allowed: str, last: bool) -> bool:
    if seg == allowed or (last and seg == "_" + allowed):
        return True
    if allowed.endswith("[x]"):
        stem = allowed[:-3]
        name = seg[1:] if seg.startswith("_") else seg
        return name.startswith(stem) and len(name) > len(stem) and name[len(stem)].isupper()
    return False


def _covered(path: list[str], allow: list[str]) -> bool:
    for a in allow:
        parts = a.split(".")
        if parts[0] != path[0] or len(path) < len(parts):
            continue
        segs = parts[1:]
        if all(_seg_ok(path[i + 1], s, i == len(segs) - 1) for i, s in enumerate(segs)):
            return True
    return False


def _leaf_paths(obj: Any, prefix: list[str]) -> list[list[str]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += _leaf_paths(v, [*prefix, k]) or [[*prefix, k]]
        return out
    if isinstance(obj, list):
        return [p for x in obj for p in _leaf_paths(x, prefix)]
    return []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(resources, max_size=4), allow_paths(), st.sampled_from([None, "safe-harbor", "transforms"]))
def test_nothing_outside_the_allow_list(res: list[dict[str, Any]], allow: list[str], mode: str | None) -> None:
    transforms = []
    if mode is not None:
        transforms = [TransformSpec(kind="pseudonym", key_env="RESEARCH_KEY")]
    if mode == "transforms":
        transforms += [TransformSpec(kind=k) for k in ("zip3", "date-year", "age-cap", "drop-text")]
    dest = DestinationSpec(
        name="d", allow=allow, transforms=transforms, profile="safe-harbor" if mode == "safe-harbor" else None
    )
    plan = compile_destination(dest, keys=KEYS)
    out = plan.apply(make_event(res))
    if isinstance(out, Denied):
        assert out.reason == "nothing-allowed"
        return
    for r in out.event["resources"]:
        rt = r["resourceType"]
        assert rt in RTYPES
        for path in _leaf_paths({k: v for k, v in r.items() if k != "resourceType"}, [rt]):
            assert _covered(path, allow), (path, allow)
    for element in out.elements:
        assert _covered(element.split("."), allow)
    if not _covered(["Patient", "identifier"], allow):
        assert out.event["patient"]["identifiers"] == []


DENY_ALL = {
    "resourceType": "Consent",
    "id": "c1",
    "status": "active",
    "scope": {"coding": [{"code": "patient-privacy"}]},
    "provision": {"type": "deny"},
}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(resources, min_size=1, max_size=3),
    st.sampled_from(["TREAT", "HPAYMT", "HRESCH"]),
    st.sampled_from(["permit", "deny"]),
    st.booleans(),
)
def test_denied_patients_never_reach_denying_destination(
    res: list[dict[str, Any]], purpose: str, default: str, targeted: bool
) -> None:
    consent = dict(DENY_ALL)
    if targeted:  # permit everything except this purpose
        consent["provision"] = {"type": "permit", "provision": [{"type": "deny", "purpose": [{"code": purpose}]}]}
    state = ConsentState.from_consents([consent])
    dest = DestinationSpec(
        name="d",
        purpose=purpose,
        consent_default=default,
        allow=[f"{rt}.{k}" for rt in RTYPES for k in ("status", "code", "name")],
    )
    out = compile_destination(dest).apply(make_event(res), state)
    assert not isinstance(out, Delivered)
    other = DestinationSpec(name="o", purpose="PUBHLTH", allow=dest.allow)
    out2 = compile_destination(other).apply(make_event(res), state)
    if targeted:
        assert not (isinstance(out2, Denied) and out2.reason.startswith("consent"))
    else:
        assert isinstance(out2, Denied)
