"""PostgreSQL sink: one row per event, upserted, with the consumer offsets in the same transaction.

Per ``write`` call, one transaction:

1. lock this consumer's offsets rows (``SELECT ... FOR UPDATE``) and check they are
   where this writer left them; if another writer moved them (a zombie after a
   rebalance) roll back and raise :class:`SinkOffsetsMoved` so the runner re-seeks;
2. ``COPY`` the rows into a per-connection temp table, then
   ``INSERT ... SELECT ... ON CONFLICT (destination, event_id) DO UPDATE`` (a replayed or
   duplicated event overwrites itself: ids are deterministic);
3. upsert ``next_offset`` per partition into ``clinstream_sink_offsets``;
4. commit.

Data and offsets commit together or not at all, so on restart the runner resumes
exactly after the last delivered record: exactly-once effect on any Kafka broker.
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql
from pydantic import Field, field_validator

from connectors.sinks.base import Sink, SinkBatch, SinkOptions
from connectors.sinks.errors import SinkConfigError, SinkError, SinkOffsetsMoved, SinkRejected, SinkRetryable
from connectors.sinks.registry import register_sink

log = logging.getLogger(__name__)

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DSN_ENV = "CLINSTREAM_PG_DSN"
COLUMNS = (
    "event_id", "destination", "event_type", "source", "patient_euid",
    "occurred_at", "received_at", "event", "resources",
)


def _ident(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError(f"{value!r} is not a plain SQL identifier (letters, digits, '_'; max 63)")
    return value


class PostgresOptions(SinkOptions):
    dsn: str | None = Field(default=None, description=f"libpq DSN; default: env {DSN_ENV}")
    dsn_env: str | None = Field(default=None, description="env var holding the DSN (keeps passwords out of YAML)")
    table: str = "clinstream_events"
    schema_name: str = Field(default="public", alias="schema")
    offsets_table: str = "clinstream_sink_offsets"
    consumer: str | None = Field(default=None, description="offsets owner; default clinstream-sink-<destination>")
    create_tables: bool = True
    connect_timeout_s: int = Field(default=10, ge=1, le=300)
    statement_timeout_ms: int = Field(default=60_000, ge=100)

    _idents = field_validator("table", "schema_name", "offsets_table")(_ident)


def _instant(value: Any) -> str | None:
    """FHIR dateTime / instant → ISO string Postgres accepts, or None.

    Partial dates (``2024``, ``2024-05``) widen to the start of the period; anything
    unparseable becomes NULL (the original stays in the ``event`` JSONB column).
    """
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) == 4 and text.isdigit():
        text += "-01-01"
    elif len(text) == 7 and text[4] == "-":
        text += "-01"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:  # FHIR dateTime without offset: treat as UTC rather than server-local
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()


@register_sink("postgres")
class PostgresSink(Sink):
    Options = PostgresOptions
    stores_offsets = True
    options: PostgresOptions

    def __init__(self, options: PostgresOptions, destination: str, settings: Any = None) -> None:  # type: ignore[override]
        super().__init__(options, destination, settings)
        if options.dsn_env:
            dsn = os.environ.get(options.dsn_env)
            if not dsn:
                raise SinkConfigError("sink.options.dsn_env", f"environment variable {options.dsn_env} is not set")
        else:
            dsn = options.dsn or os.environ.get(DSN_ENV)
        if not dsn:
            raise SinkConfigError(
                "sink.options.dsn", f"no DSN: set options.dsn, options.dsn_env or the {DSN_ENV} environment variable"
            )
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        # Where this writer believes each partition's stored offset is (the fencing token).
        self._expected: dict[tuple[str, int], int] = {}
        self.rows_written = 0
        self.last_write_s = 0.0

    @property
    def consumer_name(self) -> str:
        return self.options.consumer or super().consumer_name

    # --- names -----------------------------------------------------------------------------
    def _table(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.options.schema_name), sql.Identifier(self.options.table))

    def _offsets(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(
            sql.Identifier(self.options.schema_name), sql.Identifier(self.options.offsets_table)
        )

    # --- lifecycle -------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(
                self._dsn,
                connect_timeout=self.options.connect_timeout_s,
                options=f"-c statement_timeout={self.options.statement_timeout_ms}",
                application_name=f"clinstream-sink-{self.destination}"[:63],
            )
        except psycopg.OperationalError as exc:
            raise SinkRetryable(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
        # Staging table for COPY; ON COMMIT DELETE ROWS empties it after every batch.
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS clinstream_stage ("
                "seq bigint, event_id text, destination text, event_type text, source text, patient_euid text,"
                " occurred_at timestamptz, received_at timestamptz, event jsonb, resources jsonb"
                ") ON COMMIT DELETE ROWS"
            )
        )
        conn.commit()
        self._conn = conn
        return conn

    def start(self) -> None:
        conn = self._connect()
        if self.options.create_tables:
            self._create_tables(conn)

    def _create_tables(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.options.schema_name)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " event_id text NOT NULL,"
                    " destination text NOT NULL,"
                    " event_type text NOT NULL,"
                    " source text NOT NULL,"
                    " patient_euid text,"
                    " occurred_at timestamptz,"
                    " received_at timestamptz,"
                    " delivered_at timestamptz NOT NULL DEFAULT now(),"
                    " event jsonb NOT NULL,"
                    " resources jsonb NOT NULL,"
                    " PRIMARY KEY (destination, event_id))"
                ).format(self._table())
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (patient_euid)").format(
                    sql.Identifier(f"{self.options.table}_euid_idx"[:63]), self._table()
                )
            )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " consumer text NOT NULL, topic text NOT NULL, partition integer NOT NULL,"
                    " next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
                    " PRIMARY KEY (consumer, topic, partition))"
                ).format(self._offsets())
            )

    def stop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def health(self) -> dict[str, Any]:
        ok = False
        try:
            self._connect().execute("SELECT 1").fetchone()
            self._conn.rollback()  # type: ignore[union-attr]
            ok = True
        except Exception as exc:  # health must report, not raise
            log.warning("postgres sink %s health check failed: %s", self.destination, type(exc).__name__)
            self._drop_connection()
        return {
            "sink": self.kind, "destination": self.destination, "ok": ok,
            "table": f"{self.options.schema_name}.{self.options.table}",
            "rows_written": self.rows_written, "last_write_s": round(self.last_write_s, 4),
        }

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken; we only want it gone
                log.debug("closing a broken connection failed", exc_info=True)
        self._conn = None

    # --- offsets ---------------------------------------------------------------------------
    def committed_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        conn = self._connect()
        try:
            rows = conn.execute(
                sql.SQL("SELECT partition, next_offset FROM {} WHERE consumer = %s AND topic = %s"
                        " AND partition = ANY(%s)").format(self._offsets()),
                (self.consumer_name, topic, list(partitions)),
            ).fetchall()
            conn.rollback()
        except psycopg.errors.ProgrammingError as exc:
            conn.rollback()
            raise SinkError(f"cannot read offsets (create_tables off and no offsets table?): {exc}") from exc
        except psycopg.Error as exc:
            self._drop_connection()
            raise SinkRetryable(f"reading offsets failed: {exc}") from exc
        out = {int(p): int(o) for p, o in rows}
        for p in partitions:
            if p in out:
                self._expected[(topic, p)] = out[p]
            else:
                self._expected.pop((topic, p), None)
        return out

    # --- write -----------------------------------------------------------------------------
    def _rows(self, batches: list[SinkBatch]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        seq = 0
        for batch in batches:
            for rec in batch.records:
                ev = rec.event
                envelope = {k: v for k, v in ev.items() if k != "resources"}
                rows.append((
                    seq,
                    ev["event_id"],
                    ev.get("destination") or self.destination,
                    ev["event_type"],
                    ev["source"],
                    (ev.get("patient") or {}).get("euid"),
                    _instant(ev.get("occurred_at")),
                    _instant(ev.get("received_at")),
                    orjson.dumps(envelope).decode(),
                    orjson.dumps(ev.get("resources") or []).decode(),
                ))
                seq += 1
        return rows

    def write(self, batches: list[SinkBatch]) -> None:
        if not batches:
            return
        started = time.perf_counter()
        try:
            rows = self._rows(batches)
        except (KeyError, TypeError) as exc:
            raise SinkRejected(f"event lacks a required field: {exc}") from exc
        conn = self._connect()
        try:
            with conn.transaction():
                self._check_fence(conn, batches)
                if rows:
                    self._upsert_rows(conn, rows)
                self._store_offsets(conn, batches)
        except (SinkOffsetsMoved, SinkRejected):
            raise
        except psycopg.errors.ProgrammingError as exc:
            # Missing table/column, no privilege: waiting will not fix it, an operator must.
            raise SinkError(f"PostgreSQL sink misconfigured: {type(exc).__name__}: {exc}") from exc
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            # Content the database refuses (bad unicode escape, constraint...): permanent for these rows.
            reason = exc.diag.message_primary or str(exc)
            raise SinkRejected(f"PostgreSQL refused the batch: {type(exc).__name__}: {reason}") from exc
        except psycopg.Error as exc:
            # Connection lost, timeout, serialization failure, server restart: try again later.
            self._drop_connection()
            raise SinkRetryable(f"PostgreSQL write failed: {type(exc).__name__}: {exc}") from exc
        for b in batches:
            self._expected[(b.topic, b.partition)] = b.next_offset
        self.rows_written += len(rows)
        self.last_write_s = time.perf_counter() - started

    def _check_fence(self, conn: psycopg.Connection[Any], batches: list[SinkBatch]) -> None:
        topics = sorted({b.topic for b in batches})
        stored: dict[tuple[str, int], int] = {}
        for topic in topics:
            parts = [b.partition for b in batches if b.topic == topic]
            for p, o in conn.execute(
                sql.SQL("SELECT partition, next_offset FROM {} WHERE consumer = %s AND topic = %s"
                        " AND partition = ANY(%s) FOR UPDATE").format(self._offsets()),
                (self.consumer_name, topic, parts),
            ):
                stored[(topic, int(p))] = int(o)
        moved = [
            key[1] for key in {(b.topic, b.partition) for b in batches}
            if key in stored and self._expected.get(key) != stored[key]
        ]
        if moved:
            for key in list(self._expected):
                if key[1] in moved:
                    del self._expected[key]
            raise SinkOffsetsMoved(
                f"offsets of partitions {sorted(moved)} were moved by another writer; re-seek", moved
            )

    def _upsert_rows(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY clinstream_stage (seq, " + ", ".join(COLUMNS) + ") FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            # DISTINCT ON keeps the last occurrence of a duplicated event id within the batch:
            # ON CONFLICT cannot touch the same row twice in one statement.
            cur.execute(
                sql.SQL(
                    "INSERT INTO {table} ({cols}) "
                    "SELECT DISTINCT ON (destination, event_id) {cols} FROM clinstream_stage "
                    "ORDER BY destination, event_id, seq DESC "
                    "ON CONFLICT (destination, event_id) DO UPDATE SET "
                    "event_type = EXCLUDED.event_type, source = EXCLUDED.source,"
                    " patient_euid = EXCLUDED.patient_euid, occurred_at = EXCLUDED.occurred_at,"
                    " received_at = EXCLUDED.received_at, delivered_at = now(),"
                    " event = EXCLUDED.event, resources = EXCLUDED.resources"
                ).format(table=self._table(), cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))
            )

    def _store_offsets(self, conn: psycopg.Connection[Any], batches: list[SinkBatch]) -> None:
        latest: dict[tuple[str, int], int] = {}
        for b in batches:
            latest[(b.topic, b.partition)] = max(latest.get((b.topic, b.partition), -1), b.next_offset)
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (consumer, topic, partition, next_offset, updated_at)"
                    " VALUES (%s, %s, %s, %s, now())"
                    " ON CONFLICT (consumer, topic, partition)"
                    " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
                ).format(self._offsets()),
                [(self.consumer_name, t, p, o) for (t, p), o in latest.items()],
            )
