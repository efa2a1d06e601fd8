"""The one exception type the HL7 v2 tokenizer is allowed to raise."""

from __future__ import annotations


class Hl7ParseError(ValueError):
    """Malformed HL7 v2 input, located as precisely as we can.

    ``segment_index`` is the 1-based position of the segment in the message,
    ``field`` the 1-based HL7 field number.  ``hl7_error_code`` is the HL7 table
    0357 code an ACK should carry for this problem (102 data type error by
    default), so the MLLP listener need not guess it from the text.
    """

    def __init__(
        self,
        reason: str,
        *,
        segment_index: int | None = None,
        segment_id: str | None = None,
        field: int | None = None,
        hl7_error_code: int = 102,
    ) -> None:
        self.reason = reason
        self.segment_index = segment_index
        self.segment_id = segment_id
        self.field = field
        self.hl7_error_code = hl7_error_code
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.segment_id and self.field is not None:
            where = f"{self.segment_id}-{self.field}"
        elif self.segment_id:
            where = self.segment_id
        elif self.field is not None:
            where = f"field {self.field}"
        if self.segment_index is not None:
            where = f"{where} (segment {self.segment_index})" if where else f"segment {self.segment_index}"
        return f"{where}: {self.reason}" if where else self.reason

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Keep the keyword attributes when frameworks copy the exception.
        return (
            _rebuild,
            (type(self), self.reason, self.segment_index, self.segment_id, self.field, self.hl7_error_code),
        )


def _rebuild(
    cls: type[Hl7ParseError],
    reason: str,
    segment_index: int | None,
    segment_id: str | None,
    field: int | None,
    code: int,
) -> Hl7ParseError:
    return cls(reason, segment_index=segment_index, segment_id=segment_id, field=field, hl7_error_code=code)
