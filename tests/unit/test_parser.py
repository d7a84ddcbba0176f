"""
Tests for L{sse_twisted.parser}: one test per rule of the WHATWG event-stream
parsing algorithm, then property tests against L{Event.create} framing.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_twisted.event import MAX_RETRY, Event
from sse_twisted.parser import EventStreamParser, MessageEvent


def parse(data: bytes, parser: EventStreamParser | None = None) -> list[MessageEvent]:
    """Feed C{data} in one chunk."""
    if parser is None:
        parser = EventStreamParser()
    return parser.feed(data)


def parse_bytewise(data: bytes, parser: EventStreamParser | None = None) -> list[MessageEvent]:
    """Feed C{data} one byte at a time."""
    if parser is None:
        parser = EventStreamParser()
    events: list[MessageEvent] = []
    for i in range(len(data)):
        events.extend(parser.feed(data[i : i + 1]))
    return events


# --- decoding -----------------------------------------------------------------


def test_utf8_split_across_feeds() -> None:
    """A multi-byte UTF-8 character cut between two feeds decodes intact."""
    payload = "é€😀".encode()
    frame = b"data: " + payload + b"\n\n"
    assert parse_bytewise(frame) == [MessageEvent("message", "é€😀", "")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    """Invalid UTF-8 bytes decode to U+FFFD, one per maximal subpart."""
    assert parse(b"data: a\xffb\xf0\x9f\x98c\n\n") == [
        MessageEvent("message", "a\ufffdb\ufffdc", "")
    ]


def test_invalid_utf8_split_across_feeds() -> None:
    """A truncated sequence completed by a later feed with a bad byte gives U+FFFD."""
    parser = EventStreamParser()
    assert parser.feed(b"data: \xe2\x82") == []
    assert parser.feed(b"x\n\n") == [MessageEvent("message", "\ufffdx", "")]


def test_leading_bom_stripped() -> None:
    """One byte order mark at the very start of the stream is ignored."""
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [MessageEvent("message", "x", "")]


def test_leading_bom_split_across_feeds() -> None:
    """A BOM cut across feeds is still recognised and stripped."""
    assert parse_bytewise(b"\xef\xbb\xbfdata: x\n\n") == [MessageEvent("message", "x", "")]


def test_only_one_bom_stripped() -> None:
    """A second BOM is part of the first line, so that field name is unknown and ignored."""
    assert parse("\ufeff\ufeffdata: x\n\ndata: y\n\n".encode()) == [
        MessageEvent("message", "y", "")
    ]


def test_bom_later_in_stream_kept() -> None:
    """A BOM anywhere but the start is an ordinary character."""
    assert parse("data: x\n\ndata: \ufeffy\n\n".encode()) == [
        MessageEvent("message", "x", ""),
        MessageEvent("message", "\ufeffy", ""),
    ]


# --- line ends ----------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_line_ends(eol: bytes) -> None:
    """LF, CR and CRLF each end a line."""
    stream = b"data: a" + eol + b"data: b" + eol + eol
    assert parse(stream) == [MessageEvent("message", "a\nb", "")]
    assert parse_bytewise(stream) == [MessageEvent("message", "a\nb", "")]


def test_mixed_line_ends() -> None:
    """Line ends may be mixed within one stream."""
    assert parse(b"data: a\rdata: b\r\ndata: c\n\r\n") == [MessageEvent("message", "a\nb\nc", "")]


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    """A CR ending one feed and an LF starting the next are one line end, not two."""
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    # Had the LF counted as a second line end it would dispatch here.
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [MessageEvent("message", "a\nb", "")]
    assert parser.feed(b"\n") == []


def test_cr_then_empty_feed_then_lf() -> None:
    """An empty feed between the CR and the LF of a CRLF changes nothing."""
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [MessageEvent("message", "a", "")]


def test_cr_cr_is_two_line_ends() -> None:
    """Two CRs are two line ends, so C{data: a CR CR} dispatches."""
    assert parse(b"data: a\r\r") == [MessageEvent("message", "a", "")]


def test_other_unicode_breaks_are_not_line_ends() -> None:
    """VT, FF, NEL, LS and PS are ordinary characters, not line ends."""
    text = "a\x0bb\x0cc\x85d\u2028e\u2029f\x1cg"
    assert parse(f"data: {text}\n\n".encode()) == [MessageEvent("message", text, "")]


def test_long_line_in_many_chunks() -> None:
    """A line arriving in many chunks is reassembled once its end arrives."""
    parser = EventStreamParser()
    parser.feed(b"data: ")
    for _ in range(1000):
        assert parser.feed(b"x" * 10) == []
    assert parser.feed(b"\n\n") == [MessageEvent("message", "x" * 10000, "")]


# --- blocks and dispatch -----------------------------------------------------


def test_empty_line_dispatches() -> None:
    """An empty line dispatches the block collected so far."""
    parser = EventStreamParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"\n") == [MessageEvent("message", "x", "")]


def test_incomplete_block_at_end_not_dispatched() -> None:
    """A stream that ends (or is reset) mid-block dispatches nothing for that block."""
    parser = EventStreamParser()
    assert parser.feed(b"data: x\n") == []
    parser.reset()
    assert parser.feed(b"\n") == []


def test_reset_drops_partial_line() -> None:
    """reset() drops a partial line and a pending CR."""
    parser = EventStreamParser()
    parser.feed(b"data: half")
    parser.reset()
    assert parser.feed(b"data: whole\n\n") == [MessageEvent("message", "whole", "")]
    parser.feed(b"data: x\r")
    parser.reset()
    # The LF is a line end of the new stream, i.e. an empty line: no data yet.
    assert parser.feed(b"\ndata: y\n\n") == [MessageEvent("message", "y", "")]


def test_reset_expects_bom_again() -> None:
    """After reset() a new stream's leading BOM is stripped again."""
    parser = EventStreamParser()
    parser.feed(b"\xef\xbb\xbfdata: a\n\n")
    parser.reset()
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == [MessageEvent("message", "b", "")]


def test_reset_keeps_last_event_id() -> None:
    """reset() keeps the last event id, and later events without an id still carry it."""
    parser = EventStreamParser()
    parser.feed(b"id: 7\ndata: a\n\n")
    parser.reset()
    assert parser.last_event_id == "7"
    assert parser.feed(b"data: b\n\n") == [MessageEvent("message", "b", "7")]


def test_reset_drops_unfinished_id() -> None:
    """An id whose block never ended is not the last event id after reset()."""
    parser = EventStreamParser()
    parser.feed(b"id: 1\ndata: a\n\nid: 2\n")
    parser.reset()
    assert parser.last_event_id == "1"


def test_several_events_in_one_chunk() -> None:
    """One chunk may complete several events, returned in order."""
    assert parse(b"data: a\n\ndata: b\n\nevent: t\ndata: c\n\n") == [
        MessageEvent("message", "a", ""),
        MessageEvent("message", "b", ""),
        MessageEvent("t", "c", ""),
    ]


def test_block_without_data_not_dispatched() -> None:
    """A block with no data field dispatches nothing and clears the event type."""
    assert parse(b"event: t\n\ndata: x\n\n") == [MessageEvent("message", "x", "")]


def test_empty_data_dispatches() -> None:
    """C{data:} with an empty value dispatches an event whose data is empty."""
    assert parse(b"data:\n\n") == [MessageEvent("message", "", "")]
    assert parse(b"data\n\n") == [MessageEvent("message", "", "")]


def test_two_empty_data_lines() -> None:
    """Two empty data lines give data of one LF."""
    assert parse(b"data\ndata\n\n") == [MessageEvent("message", "\n", "")]


def test_one_trailing_lf_stripped() -> None:
    """Only the last LF added by the data lines is removed."""
    assert parse(b"data: a\ndata:\n\n") == [MessageEvent("message", "a\n", "")]


# --- comments -------------------------------------------------------------------


def test_comment_passed_verbatim() -> None:
    """A line starting with a colon is a comment; the text after the colon is passed verbatim."""
    comments: list[str] = []
    parser = EventStreamParser(on_comment=comments.append)
    assert parser.feed(b": ping\n:\n:: x\ndata: a\n\n") == [MessageEvent("message", "a", "")]
    assert comments == [" ping", "", ": x"]


def test_comment_does_not_dispatch() -> None:
    """A comment is not an empty line: it neither dispatches nor ends a block."""
    assert parse(b"data: a\n: hi\ndata: b\n\n") == [MessageEvent("message", "a\nb", "")]


def test_comments_ignored_without_callback() -> None:
    """Without an on_comment callback comments are simply ignored."""
    assert parse(b":x\n\n") == []


# --- fields ---------------------------------------------------------------------


def test_field_without_colon_has_empty_value() -> None:
    """A line without a colon is a field name with an empty value."""
    assert parse(b"data\n\n") == [MessageEvent("message", "", "")]
    assert parse(b"event\ndata: x\n\n") == [MessageEvent("message", "x", "")]


def test_one_space_after_colon_removed() -> None:
    """Exactly one space after the colon is removed; further spaces are kept."""
    assert parse(b"data:x\n\n") == [MessageEvent("message", "x", "")]
    assert parse(b"data: x\n\n") == [MessageEvent("message", "x", "")]
    assert parse(b"data:  x \n\n") == [MessageEvent("message", " x ", "")]


def test_tab_after_colon_kept() -> None:
    """Only a space is removed after the colon, not a tab."""
    assert parse(b"data:\tx\n\n") == [MessageEvent("message", "\tx", "")]


def test_value_may_contain_colons() -> None:
    """Only the first colon separates name from value."""
    assert parse(b"data: a:b: c\n\n") == [MessageEvent("message", "a:b: c", "")]


def test_field_names_are_case_sensitive() -> None:
    """C{Data} is not C{data}: field names are matched exactly."""
    assert parse(b"Data: x\n\n") == []


def test_data_lines_joined_with_lf() -> None:
    """Each data line appends its value and an LF to the data buffer."""
    assert parse(b"data: a\ndata: b\ndata: c\n\n") == [MessageEvent("message", "a\nb\nc", "")]


def test_event_sets_type() -> None:
    """The event field sets the type; the last one in a block wins."""
    assert parse(b"event: a\nevent: b\ndata: x\n\n") == [MessageEvent("b", "x", "")]


def test_empty_event_is_message() -> None:
    """An empty event field gives the type "message"."""
    assert parse(b"event:\ndata: x\n\n") == [MessageEvent("message", "x", "")]


def test_type_reset_after_dispatch() -> None:
    """The event type applies to one block only."""
    assert parse(b"event: t\ndata: a\n\ndata: b\n\n") == [
        MessageEvent("t", "a", ""),
        MessageEvent("message", "b", ""),
    ]


def test_id_sets_last_event_id() -> None:
    """The id field sets the last event id, which persists for later events."""
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\ndata: a\n\ndata: b\n\n") == [
        MessageEvent("message", "a", "1"),
        MessageEvent("message", "b", "1"),
    ]
    assert parser.last_event_id == "1"


def test_empty_id_resets_last_event_id() -> None:
    """An empty id field sets the last event id to the empty string."""
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\ndata: a\n\nid\ndata: b\n\n")[-1] == MessageEvent("message", "b", "")
    assert parser.last_event_id == ""


def test_id_with_nul_ignored() -> None:
    """An id value containing NUL is ignored."""
    parser = EventStreamParser()
    events = parser.feed(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert events[-1] == MessageEvent("message", "b", "1")
    assert parser.last_event_id == "1"


def test_id_without_data_sets_last_event_id() -> None:
    """A block with an id but no data sets the last event id without dispatching."""
    parser = EventStreamParser()
    assert parser.feed(b"id: 5\n\n") == []
    assert parser.last_event_id == "5"
    assert parser.feed(b"data: x\n\n") == [MessageEvent("message", "x", "5")]


def test_last_event_id_set_only_on_dispatch() -> None:
    """An id line takes effect at the end of its block, not before."""
    parser = EventStreamParser()
    parser.feed(b"id: 9\n")
    assert parser.last_event_id == ""
    parser.feed(b"\n")
    assert parser.last_event_id == "9"


def test_initial_last_event_id() -> None:
    """A parser resuming from an id reports it until the stream sets another."""
    parser = EventStreamParser(last_event_id="41")
    assert parser.feed(b"data: a\n\n") == [MessageEvent("message", "a", "41")]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_last_event_id_rejects_breaks(bad: str) -> None:
    """An id no stream could produce (CR, LF, NUL) is refused with ValueError."""
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        EventStreamParser(last_event_id=bad)


def test_retry_digits() -> None:
    """A retry field of ASCII digits sets the reconnection time and calls on_retry."""
    seen: list[int] = []
    parser = EventStreamParser(on_retry=seen.append)
    assert parser.retry is None
    assert parser.feed(b"retry: 3000\n\n") == []
    assert parser.retry == 3000
    assert seen == [3000]


@pytest.mark.parametrize(
    "value", [b"", b" 1", b"1 ", b"-1", b"1.5", b"1e3", b"x", "\u0661".encode(), "\u00b2".encode()]
)
def test_retry_not_digits_ignored(value: bytes) -> None:
    """A retry value that is not only ASCII digits (or is empty) is ignored."""
    seen: list[int] = []
    parser = EventStreamParser(on_retry=seen.append)
    parser.feed(b"retry: 10\n\n")
    parser.feed(b"retry: " + value + b"\n\n")
    assert parser.retry == 10
    assert seen == [10]


def test_retry_does_not_need_blank_line() -> None:
    """retry takes effect as soon as its line ends, not at dispatch."""
    parser = EventStreamParser()
    parser.feed(b"retry: 5\n")
    assert parser.retry == 5


def test_unknown_fields_ignored() -> None:
    """Unknown field names are ignored."""
    assert parse(b"foo: bar\ndata: x\nbaz\n\n") == [MessageEvent("message", "x", "")]


def test_unknown_field_only_block_not_dispatched() -> None:
    """A block of unknown fields only dispatches nothing."""
    assert parse(b"foo: bar\n\n") == []


# --- property tests against Event.create -------------------------------------

_NO_BREAKS = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=20,
)
_CHANNEL = st.text(
    alphabet=st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=20,
)
# Arbitrary text, with line breaks (CRLF included) and look-alikes made common.
_TEXT = st.lists(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
    | st.sampled_from(["\r", "\n", "\r\n", "\x85", "\u2028", "\ufeff"]),
    max_size=10,
).map("".join)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    channel = draw(_CHANNEL)
    name = draw(st.none() | _NO_BREAKS)
    id_ = draw(st.none() | _NO_BREAKS.filter(bool))  # an empty id is refused
    retry = draw(st.none() | st.integers(min_value=0, max_value=MAX_RETRY))
    if draw(st.booleans()):
        return Event.create(channel, name, text=draw(_TEXT), id=id_, retry=retry)
    return Event.create(channel, name, draw(_JSON), id=id_, retry=retry)


def expected(event: Event, previous_id: str) -> MessageEvent:
    """What a spec parser must produce for C{event}, given the id before it."""
    return MessageEvent(
        event.event or "message",
        re.sub(r"\r\n|\r", "\n", event.data),
        previous_id if event.id is None else event.id,
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = []
    start = 0
    for p in [*points, len(data)]:
        chunks.append(data[start:p])
        start = p
    return chunks


@settings(max_examples=300, deadline=None)
@given(event=events(), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_event_frame_round_trips(event: Event, cuts: list[int]) -> None:
    """Any Event's frame, cut into reads anywhere, parses back to exactly that one event."""
    retries: list[int] = []
    parser = EventStreamParser(on_retry=retries.append)
    got: list[MessageEvent] = []
    for chunk in split(event.frame, cuts):
        got.extend(parser.feed(chunk))
    assert got == [expected(event, "")]
    assert parser.last_event_id == (event.id or "")
    assert retries == ([] if event.retry is None else [event.retry])


@settings(max_examples=150, deadline=None)
@given(
    stream=st.lists(events(), max_size=8),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    bom=st.booleans(),
)
def test_concatenated_frames_round_trip(stream: list[Event], cuts: list[int], bom: bool) -> None:
    """Many frames concatenated, with an optional BOM, and cut anywhere parse to the same events."""
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(e.frame for e in stream)
    parser = EventStreamParser()
    got: list[MessageEvent] = []
    for chunk in split(data, cuts):
        got.extend(parser.feed(chunk))
    want: list[MessageEvent] = []
    last = ""
    for e in stream:
        want.append(expected(e, last))
        last = want[-1].last_event_id
    assert got == want
    assert parser.last_event_id == last
