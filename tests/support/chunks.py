"""
HTTP/1.1 chunked bodies, decoded: the one reader behind every suite's view of
a chunked event stream (whole bodies, bodies that grow, strict checks).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

_HEX = re.compile(rb"[0-9a-f]+")


class Chunk(NamedTuple):
    """One complete chunk of a body."""

    #: Offset of its size line.
    start: int
    #: Offset just after it: after its data's CRLF, or after the last-chunk
    #: line ("0" CRLF; the empty trailer's CRLF follows it).
    end: int
    #: Its data; empty for the last chunk, which ends the body.
    data: bytes


def chunks(body: bytes | bytearray, start: int = 0, *, strict: bool = False) -> Iterator[Chunk]:
    """
    The complete chunks of C{body} from offset C{start}, in order, up to and
    including the last chunk; an incomplete chunk ends the iteration (more
    bytes may come). With C{strict}, a size line that is not lower-case hex
    or a chunk whose data is not followed by CRLF is an C{AssertionError}.
    """
    pos = start
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return
        size_line = bytes(body[pos:eol])
        if strict:
            assert _HEX.fullmatch(size_line), bytes(body[pos : pos + 80])
        size = int(size_line, 16)
        if size == 0:
            yield Chunk(pos, eol + 2, b"")
            return
        end = eol + 2 + size + 2
        if len(body) < end:
            return
        if strict:
            assert body[end - 2 : end] == b"\r\n", bytes(body[pos : pos + 80])
        yield Chunk(pos, end, bytes(body[eol + 2 : end - 2]))
        pos = end


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """Decode the complete chunks of a chunked body; also say if it ended."""
    out: list[bytes] = []
    for chunk in chunks(body):
        if not chunk.data:
            return b"".join(out), True
        out.append(chunk.data)
    return b"".join(out), False


def chunk_data(body: bytes) -> bytes:
    """The data of the complete chunks of a chunked body."""
    return dechunk(body)[0]
