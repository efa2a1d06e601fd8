from connectors.sources.mllp.framing import Frame, Junk, MllpDecoder, OversizeFrame, frame

MSG = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||123^^^H^MR\r"


def feed_all(dec: MllpDecoder, chunks: list[bytes]) -> list:
    out = []
    for c in chunks:
        out.extend(dec.feed(c))
    return out


def test_one_frame():
    assert MllpDecoder(1024).feed(frame(MSG)) == [Frame(MSG)]


def test_split_at_every_byte():
    data = frame(MSG) + frame(MSG + b"X")
    events = feed_all(MllpDecoder(1024), [data[i : i + 1] for i in range(len(data))])
    assert events == [Frame(MSG), Frame(MSG + b"X")]


def test_split_between_fs_and_cr():
    data = frame(MSG)
    events = feed_all(MllpDecoder(1024), [data[:-1], data[-1:]])
    assert events == [Frame(MSG)]


def test_lone_fs_inside_payload_is_kept():
    payload = b"MSH|^~\\&|A\x1cB|"
    data = frame(payload)
    cut = data.index(b"\x1c") + 1
    assert feed_all(MllpDecoder(1024), [data[:cut], data[cut:]]) == [Frame(payload)]


def test_several_frames_in_one_read():
    data = frame(MSG) * 5
    assert MllpDecoder(1024).feed(data) == [Frame(MSG)] * 5


def test_junk_between_frames_is_reported_and_skipped():
    data = b"garbage" + frame(MSG) + b"\r\n" + b"more junk" + frame(MSG)
    events = MllpDecoder(1024).feed(data)
    assert [e for e in events if isinstance(e, Frame)] == [Frame(MSG), Frame(MSG)]
    assert sum(e.size for e in events if isinstance(e, Junk)) == len(b"garbage") + len(b"\r\nmore junk")


def test_restarted_frame_drops_partial():
    data = b"\x0bMSH|partial" + frame(MSG)
    events = MllpDecoder(1024).feed(data)
    assert events[-1] == Frame(MSG)
    assert any(isinstance(e, Junk) for e in events)


def test_oversize_keeps_head_and_recovers():
    big = MSG + b"OBX|" + b"x" * 5000 + b"\r"
    data = frame(big) + frame(MSG)
    events = feed_all(MllpDecoder(1000), [data[i : i + 700] for i in range(0, len(data), 700)])
    assert isinstance(events[0], OversizeFrame)
    assert events[0].size == len(big)
    assert events[0].head == big[:1000]
    assert events[1] == Frame(MSG)


def test_exact_limit_is_accepted():
    payload = b"M" * 100
    assert MllpDecoder(100).feed(frame(payload)) == [Frame(payload)]
    assert isinstance(MllpDecoder(99).feed(frame(payload))[0], OversizeFrame)
