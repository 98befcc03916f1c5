from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gateway.sse import SseEvent, SseParser


def test_events_split_across_chunks_and_line_endings() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"a":1}\n\ndata: x\r\ndata: y\r') == [SseEvent('{"a":1}')]
    assert parser.pending
    events = parser.feed(b"\n\r\n: keep-alive\n\nevent: error\nid: 7\nretry: 10\ndata:z")
    assert events == [SseEvent("x\ny"), SseEvent("keep-alive", comment=True)]
    assert parser.feed(b"\n\n") == [SseEvent("z", event="error", id="7", retry="10")]
    assert not parser.pending


def test_a_lone_cr_at_the_end_waits_for_a_possible_lf() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r\n") == [SseEvent("a")]


def test_unknown_fields_are_ignored_and_a_blank_line_alone_dispatches_nothing() -> None:
    parser = SseParser()
    assert parser.feed(b"\n\nfoo: bar\n\ndata\n\n") == [SseEvent("")]


def test_encode_round_trips() -> None:
    for event in (SseEvent("a\nb", event="e", id="1", retry="5"), SseEvent("c"), SseEvent("ping", comment=True)):
        assert SseParser().feed(event.encode()) == [event]


@given(
    st.lists(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_any_split_of_the_stream_yields_the_same_events(payloads: list[str], data: st.DataObject) -> None:
    stream = b"".join(SseEvent(p).encode() for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser = SseParser()
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events.extend(parser.feed(stream[start:end]))
    assert [e.data for e in events] == payloads


@pytest.mark.parametrize("raw", [b"data: \xff\xfe\n\n"])
def test_invalid_utf8_is_replaced_not_raised(raw: bytes) -> None:
    assert SseParser().feed(raw)[0].data == "\ufffd\ufffd"
