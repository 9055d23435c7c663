"""Bytes of a TCP stream into frames, as the tracker server and ``rastro decode`` do.

Both feed a protocol's session through :class:`TrackerStream`, so an offline decode
frames bytes exactly as the server does.
"""

from __future__ import annotations

import time

from pipeline.ingest.protocols.base import FrameError, TrackerSession

__all__ = ["TrackerStream", "now_ms"]


def now_ms() -> int:
    """The server clock, UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000


class TrackerStream:
    """Bytes of one TCP stream in, frames out, through the protocol's session.

    The server and ``rastro decode`` both feed sessions through this class, so both
    frame bytes the same way.  :meth:`feed` raises :class:`FrameError` when the
    session refuses the bytes, and also when it keeps more than its
    ``max_frame_bytes`` without completing a frame (memory stays bounded even if a
    session forgot to check).
    """

    def __init__(self, session: TrackerSession) -> None:
        self.session = session
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` to the buffer and return the frames it completed."""
        self.buffer += data
        frames = self.session.split(self.buffer)
        limit = self.session.max_frame_bytes
        if len(self.buffer) > limit:
            message = (
                f"{len(self.buffer)} bytes without a complete frame; "
                f"frames are at most {limit} bytes"
            )
            raise FrameError(message)
        return frames
