"""orjson's output buffers: what a record held in flight costs in memory.

orjson 3.12+ returns every ``dumps`` result in a 4 KB allocation it never trims, so each
serialized key or value the worker keeps (outputs in flight, the MPI index's unechoed writes)
held 4 KB and cost a page fault (issue 6: worker RSS and CPU). pyproject pins ``<3.12``; this
test says why, and fails if the pin is lifted to a release that still over-allocates.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import orjson
import pytest

_libc_name = ctypes.util.find_library("c")


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libc_name is None, reason="glibc malloc_usable_size")
def test_a_small_dumps_result_holds_at_most_about_a_kilobyte():
    libc = ctypes.CDLL(_libc_name)
    if not hasattr(libc, "malloc_usable_size"):
        pytest.skip("not glibc")
    libc.malloc_usable_size.restype = ctypes.c_size_t
    libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
    values = [orjson.dumps(f"b:BKMR|{i}") for i in range(100)]
    held = max(libc.malloc_usable_size(id(v)) for v in values)
    assert held <= 1100, f"orjson {orjson.__version__}: a 15-byte result holds {held} bytes"
