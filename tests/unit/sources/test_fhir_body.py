"""Pure FHIR body checks: depth byte scan, JSON errors, resource/bundle/notification shapes, keys."""

from __future__ import annotations

import orjson
import pytest

from connectors.sources.fhir_http import (
    InvalidJson,
    NotAFhirResource,
    TooDeeplyNested,
    WrongResourceType,
    json_depth,
    parse_json,
    patient_key,
    require_notification,
    require_resource,
)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{ not structure"}', 1),
        (b'{"a": "escaped \\" [[[["}', 1),
        (b"1", 0),
    ],
)
def test_json_depth_ignores_brackets_inside_strings(text: bytes, depth: int):
    assert json_depth(text) == depth


def test_depth_is_checked_before_parsing():
    with pytest.raises(TooDeeplyNested, match="depth 100 exceeds max_depth=10"):
        parse_json(b"[" * 100, 10)  # not even valid JSON: the depth check comes first


def test_invalid_json_names_the_position():
    with pytest.raises(InvalidJson, match="char 9"):
        parse_json(b'{"a": 1, ]', 10)


def test_resource_checks():
    assert require_resource({"resourceType": "Patient"}, "Patient")
    with pytest.raises(NotAFhirResource):
        require_resource([1], None)
    with pytest.raises(WrongResourceType, match="'Observation'"):
        require_resource({"resourceType": "Patient"}, "Observation")


def test_both_notification_shapes():
    r5 = {"resourceType": "Bundle", "type": "subscription-notification",
          "entry": [{"resource": {"resourceType": "SubscriptionStatus"}}]}
    r4 = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {"resourceType": "Parameters"}}]}
    assert require_notification(r5) and require_notification(r4)
    with pytest.raises(WrongResourceType):
        require_notification({"resourceType": "Bundle", "type": "batch"})


def test_patient_key_from_identifier_reference_or_bundle():
    assert patient_key({"resourceType": "Patient", "identifier": [{"system": "s", "value": "1"}]}) == b"s|1"
    assert patient_key({"resourceType": "Patient", "id": "p9"}) == b"Patient/p9"
    assert patient_key({"resourceType": "Encounter", "subject": {"reference": "Patient/2"}}) == b"Patient/2"
    bundle = orjson.loads(b'{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation",'
                          b'"subject":{"reference":"Patient/3"}}}]}')
    assert patient_key(bundle) == b"Patient/3"
    assert patient_key({"resourceType": "Organization"}) is None
