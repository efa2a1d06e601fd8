"""The optional mypyc build of the hot path (envelope codec, HL7 v2 → FHIR), and when to use the sources.

``setup.py`` compiles :data:`COMPILED_MODULES` into extension modules beside
their ``.py`` files (``pip install -e .`` builds them in place; without a C
compiler or mypy the install stays pure Python).  The modules are compiled as
one group: compiled code calls the other compiled modules' functions and classes
directly, so they must be all compiled or all source.

Python prefers an extension module over the ``.py`` next to it, even after the
``.py`` was edited, which would silently run old code.  So the package
``__init__`` files ask :func:`use_compiled`, and when it says no while
extensions exist (a source is newer than its extension, or
``CLINSTREAM_PURE_PYTHON`` is set) they load their modules from source with
:func:`load_sources`.

Module-level constants of these modules are annotated ``Final``: compiled, a
``Final`` name is a C static (or an inlined literal), while any other global is
a dictionary lookup in the module namespace on every read.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED_MODULES", "build_kind", "load_sources", "use_compiled"]

# In import order (each only imports those before it).
COMPILED_MODULES = (
    "schemas.avro_codec",  # the envelope's Avro codec: four encodes and a decode per event in the worker
    "schemas.hl7v2.parser",
    "streams.normalize.hl7v2.tables",
    "streams.normalize.hl7v2.datatypes",
    "streams.normalize.hl7v2.context",
    "streams.normalize.hl7v2.segments",
    "streams.normalize.hl7v2.convert",
)

_ROOT = Path(__file__).resolve().parent.parent


def source_path(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str) -> Path | None:
    src = source_path(module)
    for suffix in EXTENSION_SUFFIXES:
        path = src.with_name(src.stem + suffix)
        if path.exists():
            return path
    return None


@cache
def _state() -> tuple[bool, bool]:
    """(extensions present, extensions usable)."""
    built = [_extension(m) for m in COMPILED_MODULES]
    present = any(p is not None for p in built)
    if not present or os.environ.get("CLINSTREAM_PURE_PYTHON"):
        return present, False
    fresh = all(p is not None and p.stat().st_mtime >= source_path(m).stat().st_mtime
                for m, p in zip(COMPILED_MODULES, built, strict=True))
    if not fresh:
        print("clinstream: compiled hot-path modules are older than their sources; using the sources "
              "(rebuild with `pip install -e .`)", file=sys.stderr)
    return present, fresh


def use_compiled() -> bool:
    return _state()[1]


def build_kind() -> str:
    """``"mypyc"`` when the compiled hot path is in use, else ``"python"``."""
    return "mypyc" if use_compiled() else "python"


def load_sources(package: str) -> None:
    """Import ``package``'s members of the group from their ``.py`` files when the extensions must not be used."""
    present, usable = _state()
    if usable or not present:
        return  # the ordinary import machinery picks the right files
    parent = sys.modules[package]
    for name in COMPILED_MODULES:
        if name.rpartition(".")[0] != package or name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, source_path(name))
        assert spec is not None and spec.loader is not None
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        setattr(parent, name.rpartition(".")[2], module)
