"""`clinstream run ...` builds only its own parser: a source or sink process does not carry the tooling."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Imported by the parsers of the bench / mpi / preview / convert commands, needed by no source or sink;
# fastavro only by the envelope's schema tools (the per-event codec is schemas.avro_codec).
_TOOLING = ("numpy", "rapidfuzz", "rich", "streams.identity.engine", "streams.normalize.hl7v2.convert",
            "streams.route.plan", "fastavro")


def _imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {_TOOLING!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("argv", [["run", "source", "-t", "t.yaml"], ["-v", "run", "sink", "-t", "t.yaml",
                                                                      "--destination", "d"]])
def test_a_run_command_parses_without_importing_the_tooling(argv: list[str]):
    assert _imported_after(f"from clinstream.cli import build_parser\nbuild_parser({argv!r}).parse_args({argv!r})") \
        == set()


def test_the_source_and_sink_processes_do_not_import_the_tooling():
    loaded = _imported_after("from clinstream.cli import build_parser\nbuild_parser(['run'])\n"
                             "import connectors.sources.run, connectors.sources.base, connectors.sinks.runner\n"
                             "from connectors.sources import fhir_http, filedrop, mllp\n"
                             "from connectors.sources.mllp import listener")
    assert loaded == set()


def test_the_envelope_codec_works_without_fastavro():
    loaded = _imported_after("from schemas.envelope import decode_event, encode_event\n"
                             "e = {'event_id': 'e', 'event_type': 'ADT^A01', 'source': 's', 'received_at': 't',\n"
                             "     'patient': {'euid': None, 'identifiers': []}, 'resources': [{'id': 'p'}],\n"
                             "     'lineage': {'topic': 'raw', 'partition': 0, 'offset': 1, 'stages': []}}\n"
                             "assert decode_event(encode_event(e))['resources'] == e['resources']")
    assert loaded == set()


def test_every_other_command_still_has_its_parser():
    from clinstream.cli import build_parser

    parser = build_parser(["bench"])
    args = parser.parse_args(["bench", "convert", "--json"])
    assert args.func.__name__ == "bench_convert_command"
    for command in ("convert", "mpi", "preview", "dlq", "replay", "demo", "topology", "broker", "audit"):
        assert command in build_parser([command])._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    run = build_parser(["run"]).parse_args(["run", "worker", "-t", "t.yaml"])
    assert run.func.__name__ == "run_worker_command"
