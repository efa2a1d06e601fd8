"""Sources by kind: a built-in source's module is imported only when the topology names it."""

from __future__ import annotations

import subprocess
import sys

from connectors.sources.base import create_source
from topology.model import SourceSpec
from topology.settings import KafkaSettings


def test_an_mllp_source_does_not_import_the_http_stack():
    probe = ("import sys\nfrom connectors.sources.base import create_source\nfrom topology.model import SourceSpec\n"
             "from topology.settings import KafkaSettings\n"
             "src = create_source(SourceSpec(name='adt', kind='mllp', options={'port': 0}),"
             " KafkaSettings(bootstrap_servers='127.0.0.1:9'))\n"
             "print(type(src).__name__, 'aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["MllpListener", "False"]


def test_every_built_in_kind_resolves():
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    for kind, options in (("mllp", {"port": 0}), ("fhir-http", {"port": 0}), ("file", {"directory": "/nonexistent"})):
        src = create_source(SourceSpec(name=f"s-{kind}", kind=kind, options=options), settings)  # type: ignore[arg-type]
        assert src.name == f"s-{kind}"
