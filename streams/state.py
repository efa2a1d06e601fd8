"""Memory bounds of the worker's RocksDB state: the MPI index and the Faust tables.

RocksDB's defaults are sized for a database server: a 64 MB memtable, up to
three of them, and arena blocks of an eighth of that, all resident before the
first flush. The worker's stores are small (the MPI index of 30,000 events is
about 25 MB on disk), so with the defaults the memtables hold the whole index in
memory and grow with every event. Measured with ``clinstream bench pipeline``
(20,000 + 10,000 messages, 3 alternating rounds): worker peak RSS 255-281 MB with
RocksDB's defaults and a 100,000-entry read cache, 206-208 MB with the values below, at
the same speed.
Bounded memtables flush to SST files; reads then go through the bloom filter and
the block cache, which is where the hot blocks stay.

Settings under ``CLINSTREAM_STATE_``; they apply to every store the worker opens.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rocksdict import BlockBasedOptions, Cache, Options

__all__ = ["StateStoreSettings"]

_MB = 2**20


class StateStoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLINSTREAM_STATE_", extra="ignore")

    write_buffer_mb: int = Field(default=8, ge=1, le=1024, description="memtable size per store before it flushes")
    max_write_buffers: int = Field(default=2, ge=2, le=16, description="memtables per store (one filling, "
                                                                      "the others flushing)")
    block_cache_mb: int = Field(default=16, ge=1, le=65536, description="block cache per store")
    index_cache_entries: int = Field(default=20_000, ge=0, le=10_000_000,
                                     description="decoded MPI index entries kept in the worker's read cache")

    def rocksdict_options(self) -> Options:
        """Options for a store opened with rocksdict directly (the MPI index)."""
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.write_buffer_mb * _MB)
        opts.set_max_write_buffer_number(self.max_write_buffers)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)  # most index lookups miss (new blocking keys, new records)
        table.set_block_cache(Cache(self.block_cache_mb * _MB))
        opts.set_block_based_table_factory(table)
        return opts

    def faust_table_options(self) -> dict[str, Any]:
        """``options=`` of a Faust ``app.Table`` on the RocksDB store (faust's ``RocksDBOptions`` keys)."""
        return {
            "write_buffer_size": self.write_buffer_mb * _MB,
            "max_write_buffer_number": self.max_write_buffers,
            "block_cache_size": self.block_cache_mb * _MB,
        }
