"""A lazy ER7 (pipe-and-hat) tokenizer for HL7 v2.

``parse_message`` only splits the message into segments and reads the MSH
encoding characters; a segment is split into fields the first time one of its
fields is read (and cached), a field into repetitions/components/subcomponents
only when asked, and escape sequences are decoded only when a leaf value is
read.  That keeps the per-message cost close to one ``str.split`` and lets the
MLLP listener and the mapper pay only for what they touch.

Numbering follows HL7: fields, components and subcomponents are 1-based;
repetitions are 0-based list indexes.  MSH is numbered the HL7 way: MSH-1 is the
field separator itself and MSH-2 the encoding characters, so ``MSH-9`` really is
the message type.  Any malformed input raises :class:`Hl7ParseError` and nothing
else; every loop is bounded by the input length, so nothing can hang.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from schemas.hl7v2.errors import Hl7ParseError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Encoding",
    "Message",
    "Rep",
    "Segment",
    "codec_for_charset",
    "escape",
    "parse_message",
    "read_encoding",
    "unescape",
]

# A hostile or broken sender must not be able to make us allocate without bound.
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024

_SEGMENT_ID: Final = re.compile(r"[A-Z][A-Z0-9]{2}")
# Segment ids we've already validated; bounded by 26*36*36 entries.
_VALID_IDS: Final[set[str]] = {"MSH", "PID", "PV1", "OBX", "OBR", "NTE", "EVN", "ORC", "NK1"}

# MSH-18 (table 0211) → Python codec.  Anything ASCII-compatible is decoded
# directly; unknown values fall back to UTF-8-then-latin-1.
_CHARSETS: Final[dict[str, str]] = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "ISO IR192": "utf-8",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
    "BIG-5": "big5",
    "GB 18030-2000": "gb18030",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "KS X 1001": "euc_kr",
}

# Formatting escapes (FT data type) that carry no text; \.br\ and \.sp\ become newlines.
_DROP_ESCAPES: Final = frozenset({"H", "N", ".fi", ".nf", ".ce"})


def codec_for_charset(charset: str) -> str | None:
    """Python codec for an MSH-18 value, or None when unknown/empty."""
    return _CHARSETS.get(charset.strip().upper()) if charset else None


class Encoding:
    """The delimiters of one message, read from MSH-1/MSH-2 (never assumed)."""

    __slots__ = ("chars", "comp", "esc", "field", "rep", "sub", "trunc")

    def __init__(self, field: str, chars: str) -> None:
        self.field = field
        self.chars = chars
        self.comp = chars[0]
        self.rep = chars[1]
        self.esc = chars[2]
        self.sub = chars[3]
        # v2.7+ truncation character; only ever reported, never interpreted.
        self.trunc = chars[4] if len(chars) > 4 else ""

    def __repr__(self) -> str:
        return f"Encoding({self.field!r}, {self.chars!r})"


_ENCODING_CACHE: Final[dict[str, Encoding]] = {}


def read_encoding(first_segment: str, segment_index: int = 1) -> Encoding:
    """Validate and return the delimiters declared by an MSH segment line."""
    # "MSH" + separator + up to 5 encoding characters + separator fully determines
    # the result, so validated prefixes are cached (bounded: senders use few).
    key = first_segment[:10]
    cached = _ENCODING_CACHE.get(key)
    if cached is not None:
        return cached
    enc = _read_encoding(first_segment, segment_index)
    if len(_ENCODING_CACHE) < 256:
        _ENCODING_CACHE[key] = enc
    return enc


def _read_encoding(first_segment: str, segment_index: int) -> Encoding:
    if not first_segment.startswith("MSH"):
        raise Hl7ParseError(
            "message does not start with an MSH segment",
            segment_index=segment_index,
            segment_id=first_segment[:3] or None,
            hl7_error_code=100,
        )
    if len(first_segment) < 8:
        raise Hl7ParseError(
            "MSH segment too short to declare its encoding characters",
            segment_index=segment_index,
            segment_id="MSH",
            field=2,
            hl7_error_code=101,
        )
    fs = first_segment[3]
    end = first_segment.find(fs, 4)
    chars = first_segment[4:] if end < 0 else first_segment[4:end]
    if fs.isalnum() or fs.isspace():
        raise Hl7ParseError(
            f"invalid field separator {fs!r}", segment_index=segment_index, segment_id="MSH", field=1
        )
    if len(chars) not in (4, 5):
        raise Hl7ParseError(
            f"encoding characters {chars!r} must be 4 (or 5 with truncation) characters",
            segment_index=segment_index,
            segment_id="MSH",
            field=2,
        )
    if len(set(chars + fs)) != len(chars) + 1 or any(c.isalnum() or c.isspace() for c in chars):
        raise Hl7ParseError(
            f"encoding characters {chars!r} must be distinct punctuation different from {fs!r}",
            segment_index=segment_index,
            segment_id="MSH",
            field=2,
        )
    return Encoding(fs, chars)


def unescape(value: str, enc: Encoding) -> str:
    """Decode HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\ ...)."""
    esc = enc.esc
    if esc not in value:
        return value
    parts = value.split(esc)
    # Well-formed sequences sit at odd positions; an odd number of escape
    # characters leaves the last one unterminated, and that one stays literal.
    last_seq = len(parts) - 2 if len(parts) % 2 == 1 else len(parts) - 3
    out: list[str] = [parts[0]]
    i = 1
    while i < len(parts):
        seq = parts[i]
        if i > last_seq:
            out.append(esc)
            out.append(seq)
            i += 1
            continue
        out.append(_decode_escape(seq, enc, esc))
        out.append(parts[i + 1])
        i += 2
    return "".join(out)


def _decode_escape(seq: str, enc: Encoding, esc: str) -> str:
    if seq == "F":
        return enc.field
    if seq == "S":
        return enc.comp
    if seq == "T":
        return enc.sub
    if seq == "R":
        return enc.rep
    if seq == "E":
        return esc
    if seq == "P" and enc.trunc:
        return enc.trunc
    if seq in (".br", ".sp") or seq.startswith(".sp"):
        return "\n"
    if seq in _DROP_ESCAPES or seq.startswith((".in", ".ti", ".sk")):
        return ""
    if seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
        try:
            raw = bytes.fromhex(seq[1:])
        except ValueError:
            return f"{esc}{seq}{esc}"
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    # Unknown (\Zxx\, \Cxxyy\ charset switches, garbage): keep it literally, lossless.
    return f"{esc}{seq}{esc}"


def escape(value: str, enc: Encoding) -> str:
    """Escape text so it can be placed in a field of a message using ``enc``."""
    esc = enc.esc
    if esc in value:
        value = value.replace(esc, f"{esc}E{esc}")
    for ch, code in ((enc.field, "F"), (enc.comp, "S"), (enc.sub, "T"), (enc.rep, "R")):
        if ch in value:
            value = value.replace(ch, f"{esc}{code}{esc}")
    if enc.trunc and enc.trunc in value:
        value = value.replace(enc.trunc, f"{esc}P{esc}")
    if "\r" in value or "\n" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{esc}.br{esc}")
    return value


_PADS: Final = [[""] * (20 - i) for i in range(20)]  # _PADS[n]: what pads an n-item list to 20
class Rep:
    """One repetition of a field (or, via :meth:`part`, one component seen as a composite).

    ``get(comp, sub)`` returns the decoded leaf value, ``""`` when absent.
    """

    __slots__ = ("_nparts", "_parts", "_vals", "enc", "raw", "sep", "subsep")

    def __init__(self, raw: str, enc: Encoding, sep: str | None, subsep: str | None) -> None:
        self.raw = raw
        self.enc = enc
        self.sep = sep
        self.subsep = subsep
        # Raw components; when they need no decoding, vals() pads this very list with "" and
        # shares it, so only the first _nparts entries are real components.
        self._parts: list[str] | None = None
        self._nparts = 0
        self._vals: list[str] | None = None

    def _split(self) -> list[str]:
        parts = self._parts = self.raw.split(self.sep) if self.sep else [self.raw]
        self._nparts = len(parts)
        return parts

    def components(self) -> list[str]:
        """Raw (still escaped) components."""
        parts = self._parts
        if parts is None:
            return self._split()
        return parts if len(parts) == self._nparts else parts[:self._nparts]

    def raw_comp(self, comp: int) -> str:
        """Raw (still escaped) component ``comp`` (1-based), ``""`` when absent."""
        parts = self._parts if self._parts is not None else self._split()
        return parts[comp - 1] if 0 < comp <= len(parts) else ""

    def vals(self) -> list[str]:
        """Decoded first subcomponent of every component, padded with ``""`` to at least 20 entries.

        ``vals()[c - 1] == get(c)`` for every component c that ``vals()`` covers;
        computed once per repetition (mappers read most components of a composite).
        """
        v = self._vals
        if v is None:
            raw = self.raw
            parts = self._parts
            if parts is None:  # self._split(), inlined
                sep = self.sep
                parts = self._parts = raw.split(sep) if sep else [raw]
                self._nparts = len(parts)
            esc = self.enc.esc
            ss = self.subsep
            if esc not in raw:
                if ss is None or ss not in raw:
                    n = len(parts)
                    if n < 20:
                        parts.extend(_PADS[n])  # the raw components are the values: share the list
                    self._vals = parts
                    return parts
                v = []
                for p in parts:
                    v.append(p[:p.find(ss)] if ss in p else p)
            else:
                enc = self.enc
                v = []
                for p in parts:
                    if ss is not None and ss in p:
                        p = p.split(ss, 1)[0]
                    if esc in p:
                        p = unescape(p, enc)
                    v.append(p)
            if len(v) < 20:
                v.extend(_PADS[len(v)])
            self._vals = v
        return v

    def get(self, comp: int = 1, sub: int = 1) -> str:
        if sub == 1:
            v = self._vals if self._vals is not None else self.vals()
            return v[comp - 1] if 0 < comp <= len(v) else ""
        if comp < 1 or sub < 1:
            return ""
        value = self.raw_comp(comp)
        if self.subsep is not None and self.subsep in value:
            subs = value.split(self.subsep)
            if sub > len(subs):
                return ""
            value = subs[sub - 1]
        else:
            return ""
        return unescape(value, self.enc) if self.enc.esc in value else value

    def part(self, comp: int) -> Rep:
        """Component ``comp`` as a composite whose parts are its subcomponents."""
        return Rep(self.raw_comp(comp), self.enc, self.subsep, None)

    @property
    def text(self) -> str:
        """The whole repetition decoded, delimiters included (for free-text fields)."""
        return unescape(self.raw, self.enc)

    def __bool__(self) -> bool:
        return bool(self.raw)

    def __repr__(self) -> str:
        return f"Rep({self.raw!r})"


# The absent repetition, one per encoding (a Rep is never modified once built).
_EMPTY_REPS: Final[dict[Encoding, Rep]] = {}
# The repetitions of every absent field: one shared list (repetitions() lists are never mutated).
_NO_REPS: Final[list[Rep]] = []


class Segment:
    """One segment; fields are split on first access and cached, as are their repetitions."""

    __slots__ = ("_fields", "_reps", "enc", "id", "index", "raw")

    def __init__(self, sid: str, raw: str, enc: Encoding, index: int) -> None:
        self.id = sid
        self.raw = raw
        self.enc = enc
        self.index = index  # 1-based position in the message
        self._fields: list[str] | None = None
        # Repetitions by field number, one slot per field, allocated on the first repetitions() call.
        self._reps: list[list[Rep] | None] | None = None

    def fields(self) -> list[str]:
        """Raw fields with HL7 numbering: ``fields()[n]`` is field n (``[0]`` is the id)."""
        f = self._fields
        if f is None:
            fs = self.enc.field
            f = self.raw.split(fs)
            if self.id == "MSH":
                f.insert(1, fs)  # MSH-1 is the separator itself, MSH-2 the encoding chars
            self._fields = f
        return f

    def field(self, n: int) -> str:
        """Raw field n (repetitions included, still escaped), ``""`` when absent."""
        f = self._fields if self._fields is not None else self.fields()
        return f[n] if 0 <= n < len(f) else ""

    def __len__(self) -> int:
        """Number of the last field present."""
        return len(self._fields if self._fields is not None else self.fields()) - 1

    def repetitions(self, n: int) -> list[Rep]:
        """The repetitions of field n (cached: the same list on every call, don't mutate it)."""
        cache = self._reps
        if cache is not None:
            if not 0 <= n < len(cache):
                return _NO_REPS
            reps = cache[n]
            if reps is not None:
                return reps
        f = self._fields if self._fields is not None else self.fields()
        if not 0 <= n < len(f):
            return _NO_REPS
        if cache is None:
            cache = self._reps = [None] * len(f)
        raw = f[n]
        if not raw:
            cache[n] = _NO_REPS
            return _NO_REPS
        enc = self.enc
        if n <= 2 and self.id == "MSH":
            reps = [Rep(raw, enc, None, None)]
        elif enc.rep in raw:
            comp, sub = enc.comp, enc.sub
            reps = [Rep(r, enc, comp, sub) for r in raw.split(enc.rep)]
        else:
            reps = [Rep(raw, enc, enc.comp, enc.sub)]
        cache[n] = reps
        return reps

    def rep(self, n: int, i: int = 0) -> Rep:
        """Repetition ``i`` of field n; an empty Rep when absent (never raises)."""
        cache = self._reps  # the cached case inline: one call fewer when not compiled
        reps = cache[n] if cache is not None and 0 <= n < len(cache) else None
        if reps is None:
            reps = self.repetitions(n)
        if 0 <= i < len(reps):
            return reps[i]
        empty = _EMPTY_REPS.get(self.enc)
        if empty is None:
            empty = Rep("", self.enc, self.enc.comp, self.enc.sub)
            if len(_EMPTY_REPS) < 256:
                _EMPTY_REPS[self.enc] = empty
        return empty

    def get(self, n: int, rep: int = 0, comp: int = 1, sub: int = 1) -> str:
        """Decoded leaf value of field n, repetition ``rep``, component, subcomponent."""
        f = self._fields if self._fields is not None else self.fields()
        if not 0 <= n < len(f):
            return ""
        raw = f[n]
        if not raw:
            return ""
        enc = self.enc
        if n <= 2 and self.id == "MSH":
            return raw if rep == 0 and comp == 1 and sub == 1 else ""
        # Only the wanted piece is cut out at each level: the first piece with find + slice, a later
        # one with a split that stops after it (not a split of the whole field).
        if rep == 0:
            if enc.rep in raw:  # `in` first: an operator, cheaper than a method call when not compiled
                raw = raw[:raw.find(enc.rep)]
        else:
            if rep < 0:
                return ""
            pieces = raw.split(enc.rep, rep + 1)
            if rep >= len(pieces):
                return ""
            raw = pieces[rep]
        if comp == 1:
            if enc.comp in raw:  # `in` first: an operator, cheaper than a method call when not compiled
                raw = raw[:raw.find(enc.comp)]
        else:
            if comp < 1:
                return ""
            pieces = raw.split(enc.comp, comp)
            if comp > len(pieces):
                return ""
            raw = pieces[comp - 1]
        if sub == 1:
            if enc.sub in raw:  # `in` first: an operator, cheaper than a method call when not compiled
                raw = raw[:raw.find(enc.sub)]
        else:
            if sub < 1:
                return ""
            pieces = raw.split(enc.sub, sub)
            if sub > len(pieces):
                return ""
            raw = pieces[sub - 1]
        return unescape(raw, enc) if enc.esc in raw else raw

    def __repr__(self) -> str:
        return f"Segment({self.id!r}, index={self.index})"


class Message:
    """A tokenized HL7 v2 message: segment lines plus the MSH-derived header data.

    Segment objects (and the segment-id/separator checks) are built on first
    access of :meth:`segments`; that is also where a malformed segment raises.
    """

    __slots__ = ("_by_id", "_charset", "_lines", "_segs", "enc", "msh")

    def __init__(self, lines: list[str], enc: Encoding, charset: str | None = None) -> None:
        self._lines = lines
        self.enc = enc
        self.msh = Segment("MSH", lines[0], enc, 1)
        self._charset = charset
        self._segs: list[Segment] | None = None
        self._by_id: dict[str, list[Segment]] | None = None

    @property
    def segs(self) -> list[Segment]:
        segs = self._segs
        if segs is None:
            segs = self._segs = _segments(self._lines, self.enc, self.msh)
        return segs

    def segments(self, sid: str | None = None) -> list[Segment]:
        if sid is None:
            return self.segs
        by_id = self._by_id
        if by_id is None:
            by_id = {}
            for s in self.segs:
                by_id.setdefault(s.id, []).append(s)
            self._by_id = by_id
        return by_id.get(sid, [])

    def segment(self, sid: str) -> Segment | None:
        found = self.segments(sid)
        return found[0] if found else None

    def validate(self) -> Message:
        """Force segment tokenization so structural errors surface now; returns self."""
        self.segs  # noqa: B018 - property access is the point
        return self

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segs)

    def __len__(self) -> int:
        return len(self.segs)

    @property
    def charset(self) -> str:
        """MSH-18 (first repetition), ``""`` when not declared."""
        if self._charset is None:
            self._charset = self.msh.get(18)
        return self._charset

    @property
    def message_type(self) -> tuple[str, str, str]:
        """(MSH-9.1, MSH-9.2, MSH-9.3); the structure defaults to ``<type>_<trigger>``."""
        m = self.msh
        mtype, trigger, structure = m.get(9, 0, 1), m.get(9, 0, 2), m.get(9, 0, 3)
        if not structure and mtype and trigger:
            structure = f"{mtype}_{trigger}"
        return mtype, trigger, structure

    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def version(self) -> str:
        return self.msh.get(12)

    @property
    def encoding_chars(self) -> str:
        return self.enc.chars

    def __repr__(self) -> str:
        return f"Message({'^'.join(self.message_type)!r}, segments={len(self._lines)})"


def _decode(data: bytes) -> tuple[str, bool]:
    """UTF-8, else latin-1 (which cannot fail).  Returns (text, was_pure_ascii)."""
    if data.isascii():
        return data.decode("ascii"), True
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("latin-1"), False


def _strip_envelope(text: str) -> str:
    # BOM, MLLP start/end block characters and leading blank lines are transport
    # artefacts, not content.
    if text[:1] in ("\ufeff", "\x0b", "\r", "\n", " ", "\t"):
        text = text.lstrip("\ufeff\x0b\r\n \t")
    if text[-1:] in ("\x1c", "\r", "\n"):
        # Only line ends and MLLP end-of-block: a trailing space is field data.
        text = text.rstrip("\x1c\r\n")
    return text


def parse_message(
    data: bytes | bytearray | memoryview | str, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Message:
    """Tokenize one ER7-encoded message into segment lines and read its MSH.

    Fields stay unsplit until read; segment objects are built on first access.
    """
    if isinstance(data, str):
        if len(data) > max_bytes:
            raise Hl7ParseError(f"message of {len(data)} characters exceeds the {max_bytes} limit")
        lines = _split_lines(_strip_envelope(data))
        return Message(lines, read_encoding(lines[0]))
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Hl7ParseError(f"cannot parse a {type(data).__name__} as HL7 v2")
    raw = data if isinstance(data, bytes) else bytes(data)
    if len(raw) > max_bytes:
        raise Hl7ParseError(f"message of {len(raw)} bytes exceeds the {max_bytes} byte limit")
    text, ascii_only = _decode(raw)
    lines = _split_lines(_strip_envelope(text))
    enc = read_encoding(lines[0])
    if ascii_only:
        return Message(lines, enc)
    msg = Message(lines, enc)
    codec = codec_for_charset(msg.charset)
    if codec is not None and codec not in ("utf-8", "ascii"):
        # The sender declared a non-UTF-8 charset: honour it (e.g. 8859/1
        # bytes that happen to be valid UTF-8 would otherwise be misread).
        try:
            text = raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            text = raw.decode("latin-1")
        lines = _split_lines(_strip_envelope(text))
        msg = Message(lines, read_encoding(lines[0]), msg.charset)
    return msg


def _split_lines(text: str) -> list[str]:
    if not text:
        raise Hl7ParseError("empty message", hl7_error_code=100)
    # Checked separately because replace("\r\n", ...) scans slowly even when absent.
    if "\n" not in text:
        return text.split("\r")
    if "\r" not in text:
        return text.split("\n")
    return text.replace("\r\n", "\r").replace("\n", "\r").split("\r")


def _segments(lines: list[str], enc: Encoding, msh: Segment) -> list[Segment]:
    fs = enc.field
    segs: list[Segment] = [msh]
    valid = _VALID_IDS
    index = 1
    for line in lines[1:]:
        if not line:
            continue
        if line[0] <= " ":
            line = line.lstrip()
            if not line:
                continue
        index += 1
        sid = line[:3]
        if sid not in valid:
            if not _SEGMENT_ID.fullmatch(sid):
                raise Hl7ParseError(f"invalid segment id {sid!r}", segment_index=index, hl7_error_code=100)
            valid.add(sid)
        if len(line) > 3 and line[3] != fs:
            raise Hl7ParseError(
                f"segment id must be followed by the field separator {fs!r}",
                segment_index=index,
                segment_id=sid,
                hl7_error_code=100,
            )
        segs.append(Segment(sid, line, enc, index))
    return segs
