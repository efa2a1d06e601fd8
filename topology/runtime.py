"""Process-level tuning shared by the long-running processes (worker, sources, sinks).

CPython's cyclic garbage collector runs a young-generation pass every 700 net
allocations and scans every tracked object on a full pass. A pipeline process
allocates thousands of short-lived objects per event (FHIR dicts, tokens), almost
all freed by reference counting, while it holds a large, long-lived heap (Faust,
librdkafka bindings, code tables, the MPI read cache): measured on the stages alone,
the collector was a third of normalize's and half of identity's time (issue 6).
So: a larger young generation, and ``gc.freeze()`` once start-up is done, which
moves everything alive then out of the collector's sight (the heap of a server,
not garbage). Settings under ``CLINSTREAM_GC_``; ``gen0=700 freeze=false`` is
CPython's default behaviour.
"""

from __future__ import annotations

import gc
import logging
import resource

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class GcSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLINSTREAM_GC_", extra="ignore")

    gen0: int = Field(default=50_000, ge=1, description="allocations between young-generation passes")
    gen1: int = Field(default=20, ge=1)
    gen2: int = Field(default=100, ge=1)
    freeze: bool = Field(default=True, description="exclude the start-up heap from collection")


def tune_gc(settings: GcSettings | None = None) -> None:
    """Apply the thresholds now; call ``freeze_startup_heap`` once the process is set up."""
    s = settings or GcSettings()
    gc.set_threshold(s.gen0, s.gen1, s.gen2)


def freeze_startup_heap(settings: GcSettings | None = None) -> None:
    s = settings or GcSettings()
    if s.freeze:
        gc.collect()
        gc.freeze()
        log.debug("gc: %d start-up objects frozen", gc.get_freeze_count())


def process_cpu_s() -> float:
    """CPU seconds this process has used, user and system, all threads (what the benches report)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
