"""The sink registry: lookup by kind, strict options naming the bad key."""

from __future__ import annotations

import pytest

from connectors.sinks import Sink, SinkBatch, SinkConfigError, SinkOptions, create_sink, register_sink
from connectors.sinks.registry import registered
from topology.model import SinkSpec


def test_builtin_kinds_are_registered() -> None:
    kinds = registered()
    assert {"postgres", "ndjson", "mllp"} <= set(kinds)
    assert all(issubclass(cls, Sink) and cls.kind == name for name, cls in kinds.items())


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="carrier-pigeon"), "x")
    assert info.value.key == "sink.kind"
    assert "postgres" in str(info.value) and "ndjson" in str(info.value)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"dsn": "postgresql://u@h/db", "tabel": "x"}, "sink.options.tabel"),
        ({"dsn": "postgresql://u@h/db", "table": "bad name; drop"}, "sink.options.table"),
        ({"dsn": "postgresql://u@h/db", "schema": "1x"}, "sink.options.schema"),
    ],
)
def test_postgres_option_errors_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="postgres", options=options), "ehr")
    assert info.value.key == key
    assert "ehr" in str(info.value)


def test_postgres_without_dsn_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLINSTREAM_PG_DSN", raising=False)
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="postgres", options={"table": "t"}), "ehr")
    assert info.value.key == "sink.options.dsn"
    monkeypatch.setenv("CLINSTREAM_PG_DSN", "postgresql://u@h/db")
    assert create_sink(SinkSpec(kind="postgres", options={"table": "t"}), "ehr").kind == "postgres"
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="postgres", options={"dsn_env": "EHR_PG_DSN_UNSET"}), "ehr")
    assert info.value.key == "sink.options.dsn_env" and "EHR_PG_DSN_UNSET" in str(info.value)
    monkeypatch.setenv("EHR_PG_DSN", "postgresql://u@h/ehr")
    assert create_sink(SinkSpec(kind="postgres", options={"dsn_env": "EHR_PG_DSN"}), "ehr")._dsn.endswith("/ehr")  # type: ignore[attr-defined]


def test_register_custom_sink() -> None:
    class Opts(SinkOptions):
        level: int = 1

    @register_sink("test-memory")
    class MemorySink(Sink):
        Options = Opts
        stores_offsets = False

        def write(self, batches: list[SinkBatch]) -> None:
            self.last = batches

        def committed_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
            return {}

    sink = create_sink(SinkSpec(kind="test-memory", options={"level": 3}), "x")
    assert isinstance(sink, MemorySink) and sink.options.level == 3  # type: ignore[attr-defined]
    with pytest.raises(SinkConfigError, match=r"sink.options.lvl"):
        create_sink(SinkSpec(kind="test-memory", options={"lvl": 3}), "x")
    with pytest.raises(ValueError, match="already registered"):
        register_sink("test-memory")(type("Other", (MemorySink,), {}))
