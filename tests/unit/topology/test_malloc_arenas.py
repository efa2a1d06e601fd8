"""CLINSTREAM_MALLOC_ARENA_MAX caps glibc's per-thread malloc arenas from inside the process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from topology.runtime import MallocSettings

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) and malloc_info "
                                                                           "are glibc's")

# Eight threads each take memory from malloc at the same time, then the process counts the heaps
# (arenas) glibc's malloc_info reports. Without a cap glibc gives each new thread an arena of its own.
_PROBE = """
import ctypes, os, tempfile, threading
from topology.runtime import limit_malloc_arenas
applied = limit_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
held, all_in = [], threading.Barrier(9)  # held: the blocks stay allocated
def work():
    held.append(libc.malloc(4096))
    all_in.wait()
    all_in.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
all_in.wait()
path = os.path.join(tempfile.mkdtemp(), "malloc.xml")
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
all_in.wait()
for t in threads:
    t.join()
print(applied, open(path).read().count("<heap nr="))
"""


def _arenas(env: dict[str, str]) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLINSTREAM_MALLOC_", "MALLOC_ARENA"))}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=60, check=True)
    applied, heaps = out.stdout.split()
    return applied == "True", int(heaps)


def test_the_cap_holds_the_threads_to_its_arenas() -> None:
    applied, capped = _arenas({"CLINSTREAM_MALLOC_ARENA_MAX": "2"})
    assert applied and capped == 2
    not_applied, uncapped = _arenas({"CLINSTREAM_MALLOC_ARENA_MAX": "0"})
    assert not not_applied and uncapped > 2  # glibc's own limit here is eight per core


def test_glibc_own_setting_wins() -> None:
    applied, heaps = _arenas({"CLINSTREAM_MALLOC_ARENA_MAX": "2", "MALLOC_ARENA_MAX": "3"})
    assert not applied and heaps == 3


def test_the_default_is_two_and_bounds_are_checked() -> None:
    assert MallocSettings().arena_max == 2
    with pytest.raises(ValueError, match="arena_max"):
        MallocSettings(arena_max=-1)
