"""Cutting a TCP stream's buffer into frames: the loop most sessions share.

A session's :meth:`~.base.TrackerSession.split` finds where the frame at the front
of its buffer ends, cuts it off, and goes on while whole frames remain.  What
differs between protocols is only how a frame's end is found (a length field, a
terminator, a balanced bracket): :func:`cut_frames` runs the loop around that,
and :class:`TextFraming` is the end-finder of the line-like text protocols.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.ingest.protocols.base import FrameError

__all__ = ["BLANKS", "FrameEnd", "TextFraming", "cut_frames", "terminated_by"]

#: Where the frame starting at an offset of the buffer ends (the offset just past
#: it), ``None`` while it is incomplete; :class:`FrameError` when it never will.
FrameEnd = Callable[[bytearray, int], int | None]

#: Bytes text devices put between frames, dropped before each frame.
BLANKS = b" \t\r\n"


def cut_frames(
    buffer: bytearray, frame_end: FrameEnd, *, keep: int, skip: bytes = b""
) -> list[bytes]:
    """Remove the complete frames at the front of ``buffer`` and return them.

    Bytes of ``skip`` before a frame are dropped.  When bytes that cannot be a
    frame follow complete ones, the complete frames are returned and the bad
    bytes stay at the front (at most ``keep`` of them, so memory stays bounded):
    the next call raises the :class:`FrameError`, once the frames before it
    were answered.
    """
    frames: list[bytes] = []
    start = 0
    try:
        while True:
            while start < len(buffer) and buffer[start] in skip:
                start += 1
            if start == len(buffer):
                break
            end = frame_end(buffer, start)
            if end is None:
                break
            frames.append(bytes(buffer[start:end]))
            start = end
    except FrameError:
        if not frames:
            raise
        del buffer[start + keep :]

    del buffer[:start]
    return frames


def terminated_by(terminator: re.Pattern[bytes]) -> FrameEnd:
    """The end-finder of frames that end with a match of ``terminator``."""

    def end(buffer: bytearray, start: int) -> int | None:
        found = terminator.search(buffer, start)
        return None if found is None else found.end()

    return end


@dataclass(frozen=True)
class TextFraming:
    """How a line-like ASCII protocol cuts its frames, and why it refuses bytes.

    A frame starts with one of ``starts``, holds only ASCII and ends where
    ``end`` says, at most ``limit`` bytes after its start; blanks between frames
    are dropped.  ``noun`` is how messages name a frame (``"gl200 message"``),
    ``expected`` how they name the allowed first bytes.
    """

    noun: str
    starts: bytes
    expected: str
    end: FrameEnd
    limit: int

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut the complete frames off ``buffer``; see :func:`cut_frames`."""
        return cut_frames(buffer, self.frame_end, keep=self.limit, skip=BLANKS)

    def frame_end(self, buffer: bytearray, start: int) -> int | None:
        """Where the frame at ``start`` ends; refuses what can never be one."""
        end = self.end(buffer, start)
        stop = len(buffer) if end is None else end
        if buffer[start] not in self.starts:
            front = bytes(buffer[start : start + 16])
            message = (
                f"{self.noun} cannot start with {front!r}; "
                f"it must start with {self.expected}"
            )
            raise FrameError(message)
        if not buffer[start:stop].isascii():
            text = bytes(buffer[start:stop])[:32]
            message = f"{self.noun} holds a non-ASCII byte: {text!r}"
            raise FrameError(message)
        if stop - start > self.limit:
            message = f"{self.noun} exceeds {self.limit} bytes"
            raise FrameError(message)
        return end

    def text(self, frame: bytes) -> str:
        """The text of a frame to decode, refused when over-long or not ASCII."""
        if len(frame) > self.limit or not frame.isascii():
            message = f"{self.noun} is over-long or not ASCII: {frame[:32]!r}"
            raise FrameError(message)
        return frame.decode("ascii")
