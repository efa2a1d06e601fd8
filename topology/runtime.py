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
