"""The hot-path uuid5 helpers give exactly what ``uuid.uuid5`` gives."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from schemas.ids import uuid5_hex, uuid5_str

_NAMESPACES = st.builds(uuid.UUID, bytes=st.binary(min_size=16, max_size=16))
_NAMES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # uuid5 encodes strictly as UTF-8


@given(_NAMESPACES, _NAMES)
def test_same_values_as_uuid5(namespace: uuid.UUID, name: str) -> None:
    expected = uuid.uuid5(namespace, name)
    assert uuid5_str(namespace, name) == str(expected)
    assert uuid5_hex(namespace, name) == expected.hex
    assert uuid.UUID(uuid5_str(namespace, name)).version == 5
