"""The optional mypyc build: the hot-path modules are all compiled or all source, and can be forced to source."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

from schemas.compiled import COMPILED_MODULES, build_kind

_PROBE = ("import importlib, schemas.compiled as c, streams.normalize.hl7v2; "
          "print(c.build_kind(), *[importlib.import_module(m).__file__.endswith('.py') for m in c.COMPILED_MODULES])")


def test_modules_are_all_compiled_or_all_source() -> None:
    from_source = {importlib.import_module(m).__file__.endswith(".py") for m in COMPILED_MODULES}
    assert from_source == {build_kind() == "python"}


def test_pure_python_can_be_forced() -> None:
    env = {**os.environ, "CLINSTREAM_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    kind, *from_source = out.stdout.split()
    assert kind == "python"
    assert from_source == ["True"] * len(COMPILED_MODULES)
