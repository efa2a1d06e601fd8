"""The MLLP listener against a real broker: commit-then-ACK, bad input, concurrency."""

from __future__ import annotations

import asyncio

import pytest

from connectors.sources.mllp.client import MllpClient
from connectors.sources.mllp.framing import frame
from connectors.sources.mllp.listener import DLQ_INGEST, MllpListener, MllpOptions
from schemas import headers as H
from schemas.hl7v2.ack import ack_code_of
from tests.support.topics import create_topics, read_all
from topology.settings import KafkaSettings


def adt(i: int) -> bytes:
    return (
        f"MSH|^~\\&|ADT|HOSP|CLIN|HOSP|20240101120000||ADT^A01^ADT_A01|CTRL{i:06d}|P|2.5\r"
        f"EVN|A01|20240101120000\r"
        f"PID|1||MRN{i:06d}^^^HOSP^MR||DOE^JANE||19800101|F\r"
        f"PV1|1|I|W^1^1\r"
    ).encode()


@pytest.fixture
async def listener(kafka_bootstrap: str, unique_name):
    topic = unique_name("raw.hl7v2")
    create_topics(kafka_bootstrap, [topic, DLQ_INGEST], partitions=2)
    opts = MllpOptions(port=0, max_message_bytes=4096)
    lst = MllpListener("test-feed", topic, opts, KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await lst.start()
    yield lst
    await lst.stop()


async def test_n_messages_get_n_aa_acks_and_n_records(listener: MllpListener, kafka_bootstrap: str):
    n, conns = 60, 6

    async def sender(c: int) -> list[tuple[str, str]]:
        async with MllpClient("127.0.0.1", listener.port) as client:
            return [ack_code_of(await client.send(adt(c * 1000 + i))) for i in range(n // conns)]

    results = [a for r in await asyncio.gather(*(sender(c) for c in range(conns))) for a in r]
    assert [code for code, _ in results] == ["AA"] * n
    assert {ctrl for _, ctrl in results} == {f"CTRL{c * 1000 + i:06d}" for c in range(conns) for i in range(n // conns)}
    records = read_all(kafka_bootstrap, listener.topic, expect=n)
    assert len(records) == n
    hdrs = H.as_dict(records[0].headers())
    assert hdrs[H.SOURCE] == "test-feed" and hdrs[H.EVENT_ID] and hdrs[H.RECEIVED_AT]
    # keyed by the source's patient id (PID-3 + assigning authority)
    assert {r.key() for r in records} == {f"HOSP|MRN{c * 1000 + i:06d}".encode() for c in range(conns)
                                           for i in range(n // conns)}


async def test_pipelined_frames_in_one_write_are_acked_in_order(listener: MllpListener):
    async with MllpClient("127.0.0.1", listener.port) as client:
        await client.send_raw(b"junk" + b"".join(frame(adt(i)) for i in range(5)))
        acks = [ack_code_of(await client.read_ack()) for _ in range(5)]
    assert acks == [("AA", f"CTRL{i:06d}") for i in range(5)]


async def test_not_hl7_gets_ar_with_err_and_goes_to_dlq(listener: MllpListener, kafka_bootstrap: str):
    async with MllpClient("127.0.0.1", listener.port) as client:
        ack = await client.send(b"HELLO this is not HL7")
    code, _ = ack_code_of(ack)
    assert code == "AR"
    assert b"\rERR|" in ack
    dlq = [m for m in read_all(kafka_bootstrap, DLQ_INGEST) if m.value() == b"HELLO this is not HL7"]
    assert len(dlq) == 1
    h = H.as_dict(dlq[0].headers())
    assert h[H.ERROR_STAGE] == "ingest" and h[H.ORIGIN_TOPIC] == listener.topic and h[H.ERROR_MESSAGE]


async def test_oversize_gets_ar_naming_the_limit(listener: MllpListener, kafka_bootstrap: str):
    big = adt(7) + b"OBX|1|TX|x||" + b"A" * 8000 + b"\r"
    async with MllpClient("127.0.0.1", listener.port) as client:
        ack = await client.send(big)
        code, ctrl = ack_code_of(ack)
        assert (code, ctrl) == ("AR", "CTRL000007")
        assert b"max_message_bytes=4096" in ack
        # the connection survives and the next message is accepted
        assert ack_code_of(await client.send(adt(8)))[0] == "AA"
    dlq = [m for m in read_all(kafka_bootstrap, DLQ_INGEST) if H.as_dict(m.headers()).get("truncated") == "true"
           and H.as_dict(m.headers()).get(H.ORIGIN_TOPIC) == listener.topic]
    assert len(dlq) == 1 and len(dlq[0].value()) == 4096


async def test_bad_encoding_characters_get_ar(listener: MllpListener):
    async with MllpClient("127.0.0.1", listener.port) as client:
        ack = await client.send(b"MSH|\r")
    assert ack_code_of(ack)[0] == "AR"


async def test_an_idle_connection_is_closed_after_the_idle_timeout(kafka_bootstrap: str, unique_name):
    topic = unique_name("raw.hl7v2")
    create_topics(kafka_bootstrap, [topic, DLQ_INGEST], partitions=1)
    lst = MllpListener("idle-feed", topic, MllpOptions(port=0, idle_timeout_s=0.5),
                       KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await lst.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        writer.write(frame(adt(1)))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)
        assert ack_code_of(ack[1:-2])[0] == "AA"
        assert lst.stats.connections == 1
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the listener closed it: EOF
        assert 0.3 < asyncio.get_running_loop().time() - started < 5
        for _ in range(50):
            if lst.stats.connections == 0:
                break
            await asyncio.sleep(0.02)
        assert lst.stats.connections == 0
        writer.close()
    finally:
        await lst.stop()
