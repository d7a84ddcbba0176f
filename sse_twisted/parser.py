"""
An incremental parser for the WHATWG event-stream format.

Bytes go in, in chunks cut anywhere; L{MessageEvent}s come out. The parser
follows "Parsing an event stream" and "Interpreting an event stream" of
U{https://html.spec.whatwg.org/multipage/server-sent-events.html} step by
step. Nothing here knows Twisted: the client feeds it from a body protocol,
and tests feed it bytes directly.

Intentional divergences from the letter of the spec, and why:

  - The spec initialises a stream's "last event ID buffer" to the empty
    string for every new connection. L{EventStreamParser.reset} instead seeds
    it with the last event id dispatched so far, as Chromium and Firefox do:
    otherwise the first event without an C{id:} after a reconnect would blank
    the id the client resumed from, and the next reconnect would replay
    everything.
  - Comments are handed to an optional callback (the spec ignores them) so
    that clients can observe heartbeats.

Lines are split with a regular expression over decoded text rather than one
byte at a time, and a long line arriving in many chunks is kept as a list of
pieces until its end arrives, so the cost stays linear in the input.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["EventStreamParser", "MessageEvent"]

# Exactly the three line ends of the event-stream grammar. str.splitlines is
# not usable: it also splits on VT, FF, FS, GS, RS, NEL, LS and PS.
_LINE_END = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """
    One dispatched event, as a browser's C{MessageEvent} would carry it.

    @ivar type: the event type; C{"message"} when the block had no (or an
        empty) C{event:} field.
    @ivar data: the C{data:} lines joined with LF.
    @ivar last_event_id: the stream's last event id when this event was
        dispatched (not necessarily set by this block).
    """

    type: str
    data: str
    last_event_id: str


class EventStreamParser:
    """
    Turn event-stream bytes into L{MessageEvent}s, incrementally.

    @ivar retry: the last valid C{retry:} value seen, in milliseconds, or
        C{None} if there has been none.
    """

    def __init__(
        self,
        on_comment: Callable[[str], None] | None = None,
        on_retry: Callable[[int], None] | None = None,
        *,
        last_event_id: str = "",
    ) -> None:
        """
        @param on_comment: called with the text after the colon of each
            comment line, verbatim (a heartbeat C{": ping"} gives C{" ping"}).
        @param on_retry: called with each valid C{retry:} value (ms).
        @param last_event_id: the id to resume from, as for L{last_event_id}.

        Callbacks run inside L{feed}; an exception they raise propagates out
        of L{feed} and the rest of that chunk is lost.
        """
        self._on_comment = on_comment
        self._on_retry = on_retry
        self.retry: int | None = None
        self._last_event_id = ""
        self._id_buffer = ""
        self.last_event_id = last_event_id
        self.reset()

    @property
    def last_event_id(self) -> str:
        """
        The last event id: the value of the id buffer at the last dispatch.

        Setting it (to resume from a known id) also sets the id buffer.

        @raise ValueError: when set to a value with CR, LF or NUL, which no
            stream could have produced.
        """
        return self._last_event_id

    @last_event_id.setter
    def last_event_id(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"last_event_id must be a str, not {type(value).__name__}")
        if "\r" in value or "\n" in value or "\x00" in value:
            raise ValueError(f"last_event_id must not contain CR, LF or NUL: {value!r}")
        self._last_event_id = value
        self._id_buffer = value

    def reset(self) -> None:
        """
        Prepare for a new stream (a reconnection).

        Drops any partial line, undecoded bytes and the data and event type
        buffers; expects a byte order mark again. Keeps L{last_event_id} and
        L{retry}, as an EventSource does across reconnections.
        """
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._expect_bom = True
        self._skip_lf = False
        self._partial: list[str] = []
        self._data: list[str] = []
        self._type = ""
        self._id_buffer = self._last_event_id

    def feed(self, chunk: bytes) -> list[MessageEvent]:
        """
        Parse the next C{chunk} of the stream and return the events it
        completes, in order.

        A chunk may end anywhere: inside a UTF-8 sequence, a line, or between
        the CR and LF of a CRLF. A block is dispatched only when its blank
        line arrives, so a stream that ends mid-block dispatches nothing more.
        """
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._expect_bom:
            self._expect_bom = False
            if text[0] == _BOM:
                text = text[1:]
        if self._skip_lf:
            # The previous chunk ended with a CR that has already ended a
            # line; an LF right after it is the second half of that CRLF.
            if not text:
                return []
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if "\n" not in text and "\r" not in text:
            if text:
                self._partial.append(text)
            return []
        if self._partial:
            self._partial.append(text)
            text = "".join(self._partial)
            self._partial = []
        lines = _LINE_END.split(text)
        # The last piece has no line end yet (it is "" if the text ended with
        # one). A trailing lone CR may be the first half of a CRLF.
        rest = lines.pop()
        if rest:
            self._partial.append(rest)
        elif text[-1] == "\r":
            self._skip_lf = True
        events: list[MessageEvent] = []
        for line in lines:
            self._line(line, events)
        return events

    def _line(self, line: str, events: list[MessageEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        colon = line.find(":")
        if colon == 0:
            if self._on_comment is not None:
                self._on_comment(line[1:])
            return
        if colon < 0:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == " ":
                value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\x00" not in value:
                self._id_buffer = value
        # Only ASCII digits: str.isdigit alone also accepts other scripts'
        # digits and superscripts. An empty value is ignored too.
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
            if self._on_retry is not None:
                self._on_retry(self.retry)
        # Any other field name is ignored.

    def _dispatch(self, events: list[MessageEvent]) -> None:
        self._last_event_id = self._id_buffer
        if not self._data:
            self._type = ""
            return
        # Joining the values with LF is the spec's "append value and LF, then
        # remove the one trailing LF".
        data = "\n".join(self._data)
        events.append(MessageEvent(self._type or "message", data, self._last_event_id))
        self._data = []
        self._type = ""
