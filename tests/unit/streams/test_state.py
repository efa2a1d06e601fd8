"""The worker's RocksDB memory bounds: memtables flush to SST files, the MPI read cache stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.replicated_store import ReplicatedStore
from streams.state import StateStoreSettings
from topology.settings import KafkaSettings

_NO_BROKER = KafkaSettings(bootstrap_servers="127.0.0.1:9")  # flush() and get() never talk to Kafka


def test_small_memtables_flush_to_sst_and_every_value_reads_back(tmp_path: Path):
    state = StateStoreSettings(write_buffer_mb=1, block_cache_mb=1, index_cache_entries=100)
    store = ReplicatedStore(_NO_BROKER, "mpi-index", tmp_path, state=state)
    for batch in range(40):  # 20,000 values of ~1 KB: twenty times the memtable
        for i in range(500):
            store.put(f"b:{batch}:{i}", [f"E{batch}-{i}", "x" * 1000])
        assert len(store.flush()) == 500
        assert len(store._cache) <= 100
    store.stop()
    assert list(tmp_path.glob("*.sst")), "a 1 MB memtable must have been flushed to SST files"

    reopened = ReplicatedStore(_NO_BROKER, "mpi-index", tmp_path, state=state)
    try:
        for batch in range(40):
            for i in range(0, 500, 7):
                assert reopened.get(f"b:{batch}:{i}") == [f"E{batch}-{i}", "x" * 1000]
                assert len(reopened._cache) <= 100
        assert reopened.get("b:none") is None
    finally:
        reopened.stop()


def test_faust_table_options_are_faust_rocksdb_option_names():
    from faust.stores.rocksdb import RocksDBOptions

    opts = RocksDBOptions(**StateStoreSettings(write_buffer_mb=4, block_cache_mb=8).faust_table_options())
    assert (opts.write_buffer_size, opts.max_write_buffer_number, opts.block_cache_size) == (4 * 2**20, 2, 8 * 2**20)


def test_a_bad_setting_names_its_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CLINSTREAM_STATE_WRITE_BUFFER_MB", "0")
    with pytest.raises(ValidationError, match="write_buffer_mb"):
        StateStoreSettings()
