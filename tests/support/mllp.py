"""A scripted legacy MLLP receiver for the mllp sink tests (real sockets, real framing).

Answers AA, except AE (with an ERR segment) for messages whose PID-3 contains
``REJECT``, and, for ``SLOW``, an ACK held back ``slow_s`` the first time a control id
is seen (so the sender times out and resends the same message).
"""

from __future__ import annotations

import asyncio
from typing import Any

from connectors.sinks.mllp_receiver import MllpAckReceiver
from schemas.hl7v2.ack import AckCode, AckError
from schemas.hl7v2.msh import MshHeader
from schemas.hl7v2.parser import Message


class ScriptedReceiver(MllpAckReceiver):
    def __init__(self, *args: Any, slow_s: float = 1.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slow_s = slow_s
        self._slowed: set[str] = set()

    async def acknowledge(self, message: Message, header: MshHeader) -> tuple[AckCode, AckError | None]:
        pid = message.segment("PID")
        ids = pid.field(3) if pid is not None else ""
        if "REJECT" in ids:
            return "AE", AckError(204, "Unknown patient identifier REJECT", segment_id="PID", segment_index=3,
                                  field=3)
        if "SLOW" in ids and header.control_id not in self._slowed:
            self._slowed.add(header.control_id)
            await asyncio.sleep(self.slow_s)
        return "AA", None

    def arrivals(self, control_id: str) -> int:
        return sum(1 for r in self.received if r.control_id == control_id)
