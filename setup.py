"""Optional compiled build of the hot path: the envelope codec and HL7 v2 → FHIR (mypyc, about twice as fast).

Project metadata lives in pyproject.toml; this file only adds the extension
modules.  Anything that stops the build (no mypy, no C compiler, a compile
error) leaves a working pure-Python install, and ``CLINSTREAM_PURE_PYTHON=1``
skips it on purpose.  See schemas/compiled.py for how the modules are chosen at
import time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from schemas.compiled import COMPILED_MODULES, source_path


def _warn(what: str, exc: BaseException) -> None:
    print(f"clinstream: {what} ({type(exc).__name__}: {exc}); the hot path stays pure Python",
          file=sys.stderr)


def _extensions() -> list[Any]:
    if os.environ.get("CLINSTREAM_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify

        paths = [str(source_path(m).relative_to(Path(__file__).resolve().parent)) for m in COMPILED_MODULES]
        return mypycify(["--ignore-missing-imports", "--follow-imports=silent", *paths], opt_level="3",
                        group_name="clinstream_hl7v2_native")  # the shared library: a stable module name
    except BaseException as exc:  # SystemExit on type errors, ImportError without mypy
        _warn("mypyc build unavailable", exc)
        return []


class OptionalBuildExt(build_ext):
    """build_ext that leaves no half-built group behind: all extensions or none."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _warn("compiling the extensions failed", exc)
            for ext in self.extensions:
                for inplace in (False, True):
                    self.inplace = inplace
                    Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
