"""Direct table access writes the bytes Faust's own serializers write (so recovery and standbys agree)."""

from __future__ import annotations

import faust
import orjson
import pytest

from streams.tables import PartitionedTableView, changelog_partition


@pytest.mark.parametrize("value", ["a3f|1712345678.123", "Ö-ü", "c|feed|MSG00001"])
def test_keys_and_values_encoded_as_faust_json_serializer(value: str) -> None:
    app = faust.App("encoding-check")
    table = app.Table("t", key_type=str, value_type=str)
    assert app.serializers.dumps_key(str, value, serializer=table.key_serializer) == orjson.dumps(value)
    assert app.serializers.dumps_value(str, value, serializer=table.value_serializer) == orjson.dumps(value)


class _MemoryTable(dict):
    """A table whose store is not RocksDB (``memory://``): the view goes through the mapping."""

    data: dict = {}


def test_non_rocksdb_store_goes_through_the_table() -> None:
    table = _MemoryTable()
    view = PartitionedTableView(table)
    view["k"] = "v"
    assert table == {"k": "v"} and view.get("k") == "v" and view["k"] == "v"
    assert view.get("missing") is None and len(view) == 1 and list(view) == ["k"]
    with pytest.raises(KeyError):
        view["missing"]


def test_changelog_partition_is_stable_and_in_range() -> None:
    parts = {changelog_partition(f"b:key{i}".encode(), 4) for i in range(200)}
    assert parts == {0, 1, 2, 3}
    assert changelog_partition(b'"b:x"', 4) == changelog_partition(b'"b:x"', 4)
