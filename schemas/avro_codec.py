"""Avro binary encoding compiled from a schema into plain closures, for the envelope's hot path.

fastavro's ``schemaless_writer`` spends ~30 µs on one ClinicalEvent (its generic,
per-call type dispatch), four times per event across the stages: more than
normalising a small ADT message. The envelope schema uses a handful of Avro types,
so it is compiled once into one writer and one reader closure per field. The bytes
are the Avro binary encoding (the same bytes fastavro writes, which the tests check
over generated events), so every other Avro reader and the Schema Registry wire
format are unaffected. Types outside that handful are refused at compile time:
extend this module (and its tests) before using them in a schema on the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Writer = Callable[[Any, list[bytes]], None]
Reader = Callable[[bytes, int], tuple[Any, int]]

_ONE_BYTE = [bytes([n << 1]) for n in range(64)]  # the zig-zag varint of 0..63 is one byte


class AvroCodecError(ValueError):
    """A value that does not match the schema, or bytes that are not an encoding of it."""


def _long_bytes(n: int) -> bytes:
    if 0 <= n < 64:
        return _ONE_BYTE[n]
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    z = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        shift += 7
    return (z >> 1) ^ -(z & 1), pos


def _write_string(v: Any, out: list[bytes]) -> None:
    if not isinstance(v, str):
        raise AvroCodecError(f"expected a string, got {type(v).__name__}")
    data = v.encode()
    out.append(_long_bytes(len(data)))
    out.append(data)


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = _read_long(buf, pos)
    end = pos + n
    if n < 0 or end > len(buf):
        raise AvroCodecError("string runs past the end of the record")
    return buf[pos:end].decode(), end


def _write_long(v: Any, out: list[bytes]) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise AvroCodecError(f"expected an integer, got {type(v).__name__}")
    out.append(_long_bytes(v))


def _compile(schema: Any) -> tuple[Writer, Reader]:
    if isinstance(schema, str):
        if schema == "string":
            return _write_string, _read_string
        if schema in ("int", "long"):
            return _write_long, _read_long
        raise AvroCodecError(f"type {schema!r} is not supported by the compiled codec")
    if isinstance(schema, list):
        return _compile_nullable(schema)
    kind = schema.get("type")
    if kind == "record":
        return _compile_record(schema)
    if kind == "array":
        return _compile_array(schema)
    if isinstance(kind, str | list) and len(schema) == 1:
        return _compile(kind)
    raise AvroCodecError(f"type {kind!r} is not supported by the compiled codec")


def _compile_nullable(branches: list[Any]) -> tuple[Writer, Reader]:
    if len(branches) != 2 or branches[0] != "null":
        raise AvroCodecError(f"only ['null', T] unions are supported, got {branches!r}")
    write_value, read_value = _compile(branches[1])

    def write(v: Any, out: list[bytes]) -> None:
        if v is None:
            out.append(b"\x00")
        else:
            out.append(b"\x02")
            write_value(v, out)

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        branch, pos = _read_long(buf, pos)
        if branch == 0:
            return None, pos
        if branch != 1:
            raise AvroCodecError(f"union branch {branch} out of range")
        return read_value(buf, pos)

    return write, read


def _compile_array(schema: dict[str, Any]) -> tuple[Writer, Reader]:
    write_item, read_item = _compile(schema["items"])

    def write(v: Any, out: list[bytes]) -> None:
        if not isinstance(v, list | tuple):
            raise AvroCodecError(f"expected an array, got {type(v).__name__}")
        if v:
            out.append(_long_bytes(len(v)))
            for item in v:
                write_item(item, out)
        out.append(b"\x00")

    def read(buf: bytes, pos: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        while True:
            count, pos = _read_long(buf, pos)
            if count == 0:
                return items, pos
            if count < 0:  # a block with its byte size (allowed by the spec)
                count = -count
                _, pos = _read_long(buf, pos)
            for _ in range(count):
                item, pos = read_item(buf, pos)
                items.append(item)

    return write, read


_NO_DEFAULT = object()
# How a record writes and reads a field: the envelope is mostly strings and optional strings,
# which the record's own loop handles inline (three Python calls fewer per field: ~2x per event,
# four encodes per event in the worker); anything else goes through the field's compiled closure.
_STR, _OPT_STR, _LONG, _OTHER = 0, 1, 2, 3


def _field_kind(schema: Any) -> int:
    if isinstance(schema, dict) and len(schema) == 1 and "type" in schema:
        return _field_kind(schema["type"])
    if schema == "string":
        return _STR
    if schema in ("int", "long"):
        return _LONG
    if schema == ["null", "string"]:
        return _OPT_STR
    return _OTHER


def _compile_record(schema: dict[str, Any]) -> tuple[Writer, Reader]:
    fields = [(f["name"], _field_kind(f["type"]), *_compile(f["type"]), f.get("default", _NO_DEFAULT))
              for f in schema["fields"]]
    name = schema.get("name", "record")

    def write(v: Any, out: list[bytes]) -> None:
        if not isinstance(v, dict):
            raise AvroCodecError(f"{name}: expected a record, got {type(v).__name__}")
        get, append = v.get, out.append
        for field, kind, write_field, _, default in fields:
            value = get(field, default)
            if value is _NO_DEFAULT:
                raise AvroCodecError(f"{name}.{field} is missing")
            if kind == _OPT_STR:
                if value is None:
                    append(b"\x00")
                    continue
                append(b"\x02")
                kind = _STR
            if kind == _STR:
                if not isinstance(value, str):
                    raise AvroCodecError(f"{name}.{field}: expected a string, got {type(value).__name__}")
                data = value.encode()
                n = len(data)
                append(_ONE_BYTE[n] if n < 64 else _long_bytes(n))
                append(data)
            elif kind == _LONG:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise AvroCodecError(f"{name}.{field}: expected an integer, got {type(value).__name__}")
                append(_ONE_BYTE[value] if 0 <= value < 64 else _long_bytes(value))
            else:
                try:
                    write_field(value, out)
                except AvroCodecError as exc:
                    raise AvroCodecError(f"{name}.{field}: {exc}") from None

    def read(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        record: dict[str, Any] = {}
        for field, kind, _, read_field, _ in fields:
            if kind == _OPT_STR:
                branch = buf[pos]
                pos += 1
                if branch == 0:
                    record[field] = None
                    continue
                if branch != 2:
                    raise AvroCodecError(f"union branch {branch} out of range")
                kind = _STR
            if kind == _STR:
                b = buf[pos]
                if b < 0x80:
                    n, pos = (b >> 1) ^ -(b & 1), pos + 1
                else:
                    n, pos = _read_long(buf, pos)
                end = pos + n
                if n < 0 or end > len(buf):
                    raise AvroCodecError("string runs past the end of the record")
                record[field] = buf[pos:end].decode()
                pos = end
            else:
                record[field], pos = read_field(buf, pos)
        return record, pos

    return write, read


def compile_codec(schema: dict[str, Any]) -> tuple[Callable[[dict[str, Any]], bytes],
                                                   Callable[[bytes], dict[str, Any]]]:
    """(encode, decode) for a record schema; both raise ``AvroCodecError`` on a mismatch."""
    write, read = _compile_record(schema)

    def encode(record: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        write(record, out)
        return b"".join(out)

    def decode(data: bytes) -> dict[str, Any]:
        try:
            record, end = read(data, 0)
        except (IndexError, UnicodeDecodeError) as exc:
            raise AvroCodecError(f"not an encoding of {schema.get('name')}: {exc}") from None
        if end != len(data):
            raise AvroCodecError(f"{len(data) - end} bytes left after the record")
        return record

    return encode, decode


# --- the schema's identity ------------------------------------------------------------------

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_CANONICAL_KEYS = ("name", "type", "fields", "symbols", "items", "values", "size")  # [STRIP] and [ORDER]


def parsing_canonical_form(schema: Any) -> str:
    """The schema's Parsing Canonical Form (Avro specification), what its fingerprint is taken over.

    Two schemas that read and write the same bytes have the same form: docs, defaults, aliases
    and whitespace are dropped, names are made full, keys are put in the specification's order.
    Written here so the processes that send the fingerprint do not import fastavro (the tests
    check the form against fastavro's)."""
    return json.dumps(_canonical(schema, "", set()), separators=(",", ":"), ensure_ascii=False)


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _canonical(schema: Any, namespace: str, named: set[str]) -> Any:
    if isinstance(schema, str):
        return schema if schema in _PRIMITIVES else _fullname(schema, namespace)
    if isinstance(schema, list):
        return [_canonical(s, namespace, named) for s in schema]
    kind = schema["type"]
    if kind in _PRIMITIVES and isinstance(kind, str):  # [PRIMITIVES] {"type": "int"} -> "int"
        return kind
    if not isinstance(kind, str) or kind not in ("record", "error", "enum", "fixed", "array", "map"):
        return _canonical(kind, namespace, named)  # {"type": <schema>}: that schema
    out: dict[str, Any] = {}
    if kind in ("record", "error", "enum", "fixed"):
        full = _fullname(schema["name"], schema.get("namespace", namespace))
        named.add(full)
        namespace = full.rpartition(".")[0]
        out["name"] = full
    out["type"] = kind
    if kind in ("record", "error"):
        out["fields"] = [{"name": f["name"], "type": _canonical(f["type"], namespace, named)}
                         for f in schema["fields"]]
    elif kind == "enum":
        out["symbols"] = list(schema["symbols"])
    elif kind == "array":
        out["items"] = _canonical(schema["items"], namespace, named)
    elif kind == "map":
        out["values"] = _canonical(schema["values"], namespace, named)
    else:
        out["size"] = int(schema["size"])
    return {k: out[k] for k in _CANONICAL_KEYS if k in out}
