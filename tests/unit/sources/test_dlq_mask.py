"""PHI masking for `clinstream dlq show` (pure functions)."""

from __future__ import annotations

import pytest

from streams.dlq import DlqError, RecordRef, mask_hl7, mask_json, render_payload


def test_hl7_masks_identifying_segments_with_the_message_separators():
    msg = "MSH#!~\\&#A#B\rPID#1##M1!!!H##DOE!JO\rNK1#1#ROE!AL\nPV1#1#I"
    assert mask_hl7(msg) == "MSH#!~\\&#A#B\rPID#***##***!!!***##***!***\rNK1#***#***!***\nPV1#1#I"


def test_json_keeps_only_structural_codes():
    doc = {"resourceType": "Patient", "birthDate": "1970-01-01", "multipleBirthInteger": 2,
           "maritalStatus": {"coding": [{"system": "s", "code": "M", "display": "Married"}]}}
    assert mask_json(doc) == {"resourceType": "Patient", "birthDate": "***", "multipleBirthInteger": 2,
                              "maritalStatus": {"coding": [{"system": "s", "code": "M", "display": "***"}]}}


def test_unknown_bytes_are_not_shown_masked():
    assert render_payload(b"\x00\x01garbage") == ("bytes", "<9 bytes masked>")
    assert render_payload(b"{broken") == ("invalid-json", "<7 bytes masked>")
    assert render_payload(b"{broken", reveal=True) == ("invalid-json", "{broken")


def test_record_ref_parsing():
    assert RecordRef.parse("dlq.normalize:2:17") == RecordRef("dlq.normalize", 2, 17)
    with pytest.raises(DlqError):
        RecordRef.parse("dlq.normalize:x")
