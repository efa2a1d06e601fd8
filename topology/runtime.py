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

glibc's malloc gives each thread that allocates an arena of its own, up to eight per
core. A worker runs 28 threads (librdkafka's per client and per broker, RocksDB's and
Python helper threads) and each arena keeps the memory its thread once used, so a
worker's resident memory grew by arenas no thread was using much (issue 6: peak RSS
is one of the pipeline's targets). ``CLINSTREAM_MALLOC_ARENA_MAX`` caps them the way
``MALLOC_ARENA_MAX`` does, from inside the process, before its threads start.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class GcSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLINSTREAM_GC_", extra="ignore")

    gen0: int = Field(default=50_000, ge=1, description="allocations between young-generation passes")
    gen1: int = Field(default=20, ge=1)
    gen2: int = Field(default=100, ge=1)
    freeze: bool = Field(default=True, description="exclude the start-up heap from collection")


class MallocSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLINSTREAM_MALLOC_", extra="ignore")

    arena_max: int = Field(default=2, ge=0, le=1024,
                           description="glibc malloc arenas at most (0: glibc's own limit, eight per core)")


_M_ARENA_MAX = -8  # glibc <malloc.h>


def limit_malloc_arenas(settings: MallocSettings | None = None) -> bool:
    """Cap glibc's malloc arenas; True if the cap was set. Call it before the process starts threads
    (an arena a thread already has stays). ``MALLOC_ARENA_MAX`` in the environment is glibc's own
    setting of the same thing and is left to win; a C library without ``mallopt`` (musl's is a no-op,
    macOS has none) is left as it is."""
    s = settings or MallocSettings()
    if s.arena_max == 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_ARENA_MAX, s.arena_max) == 1
    if not done:
        log.debug("malloc: mallopt(M_ARENA_MAX, %d) was refused", s.arena_max)
    return done


def tune_process() -> None:
    """What every long-running process (worker, sources, sinks) applies first: the malloc arenas and
    the collector's thresholds; ``freeze_startup_heap`` follows once it is set up."""
    limit_malloc_arenas()
    tune_gc()


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


@contextmanager
def worker_collector(settings: GcSettings | None = None) -> Iterator[GcSettings]:
    """The collector as a long-running process has it (``tune_gc``, then ``freeze_startup_heap``),
    for a benchmark that measures in-process what that process runs; CPython's thresholds and an
    unfrozen heap are back afterwards."""
    s = settings or GcSettings()
    thresholds = gc.get_threshold()
    tune_gc(s)
    freeze_startup_heap(s)
    try:
        yield s
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def process_cpu_s() -> float:
    """CPU seconds this process has used, user and system, all threads (what the benches report)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# /proc/stat's aggregate cpu line, in its order (Linux).
_CPU_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_ticks() -> tuple[int, ...]:
    """The machine's CPU time so far by state (:data:`_CPU_STATES`, clock ticks, all CPUs); ``()``
    where ``/proc/stat`` is not there."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return ()
    if len(fields) <= len(_CPU_STATES):  # a kernel without the steal column: no shares rather than wrong ones
        return ()
    return tuple(int(v) for v in fields[1:1 + len(_CPU_STATES)])


def machine_cpu_shares(before: tuple[int, ...], after: tuple[int, ...]) -> dict[str, float]:
    """Percent of the machine's CPU time between two :func:`machine_cpu_ticks` that was busy
    (ours and anyone's on this machine), idle, and *stolen*: time the hypervisor gave our
    virtual CPUs' turn to another guest. A bench figure from a run with steal is from a
    slower machine than the same run without; the benches report it beside their figures."""
    if len(before) != len(_CPU_STATES) or len(after) != len(_CPU_STATES):
        return {}
    delta = dict(zip(_CPU_STATES, (b - a for a, b in zip(before, after, strict=True)), strict=True))
    total = sum(delta.values())
    if total <= 0:
        return {}
    idle = delta["idle"] + delta["iowait"]
    steal = delta["steal"]
    return {"busy": round(100 * (total - idle - steal) / total, 1), "idle": round(100 * idle / total, 1),
            "steal": round(100 * steal / total, 1)}
