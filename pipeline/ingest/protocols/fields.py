"""Fields of the text protocols: numbers, coordinates and times, checked as read.

Text trackers (GPS103, TK103, @Track, Meitrack ``AAA``, the watches, Suntech) send
comma- or semicolon-separated ASCII fields.  Each conversion here either returns
the value or raises :class:`~.base.FrameError` naming the field and showing what
was received, so a hostile or garbled report never escapes as another error.
``name`` is how the message names the field; protocols that tag their messages
put their name in front (``"gps103 speed"``).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from pipeline.ingest.protocols.base import FrameError

__all__ = [
    "DECIMAL",
    "ascii_text",
    "ddmmyy_hhmmss_ms",
    "degrees",
    "degrees_minutes",
    "integer",
    "number",
    "number_within",
    "utc_ms",
]

#: A signed decimal number: digits, then optionally a point and more digits.
DECIMAL = re.compile(r"[-+]?\d+(?:\.\d+)?")


def ascii_text(data: bytes, name: str) -> str:
    """``data`` as text; a byte beyond ASCII is refused and shown."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as error:
        message = f"{name} must be ASCII, got byte {error.object[error.start]:#04x}"
        raise FrameError(message) from None


def integer(text: str, name: str, *, base: int = 10) -> int:
    """The integer ``text`` writes in ``base``."""
    try:
        return int(text, base)
    except ValueError:
        message = f"{name} must be an integer, got {text!r}"
        raise FrameError(message) from None


def number(text: str, name: str) -> float:
    """The finite number ``text`` writes (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        message = f"{name} must be a number, got {text!r}"
        raise FrameError(message) from None
    if not math.isfinite(value):
        message = f"{name} must be finite, got {text!r}"
        raise FrameError(message)
    return value


def degrees(text: str, name: str, limit: float) -> float:
    """Signed decimal degrees within ±``limit`` (90 for latitude, 180 longitude)."""
    value = number(text, name)
    if not -limit <= value <= limit:
        message = f"{name} must be within ±{limit:g} degrees, got {text!r}"
        raise FrameError(message)
    return value


def number_within(
    text: str,
    name: str,
    low: float,
    high: float,
    pattern: re.Pattern[str] = DECIMAL,
) -> float | None:
    """The number in ``text``, ``None`` when empty; refused outside [low, high].

    ``pattern`` is the protocol's own number syntax (whole match), so that what
    ``float`` would also take (``1e5``, ``nan``, ``1_0``) is refused.
    """
    if not text:
        return None
    if pattern.fullmatch(text) is None:
        message = f"{name} must be a number, got {text[:20]!r}"
        raise FrameError(message)
    value = float(text)
    if not low <= value <= high:
        message = f"{name} must be {low:g} to {high:g}, got {text[:20]!r}"
        raise FrameError(message)
    return value


def degrees_minutes(text: str, limit: float, name: str) -> float:
    """``(d)ddmm.mmmm`` as unsigned degrees: the minutes are the two digits before
    the point and what follows it, the degrees what comes before them (none: 0).

    ``text`` must hold a point; the digits are the caller's to check.
    """
    point = text.index(".") - 2
    if point < 0:
        point = 0
    minutes = float(text[point:])
    value = int(text[:point] or "0") + minutes / 60.0
    if minutes >= 60.0 or value > limit:
        message = f"{name} out of range: {text!r}"
        raise FrameError(message)
    return value


def utc_ms(
    year: int, month: int, day: int, hour: int, minute: int, second: int, name: str
) -> int:
    """Epoch milliseconds of a UTC date and time; refused when there is none."""
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        message = (
            f"{name} out of range: {year:04d}-{month:02d}-{day:02d} "
            f"{hour:02d}:{minute:02d}:{second:02d} is not a valid UTC time"
        )
        raise FrameError(message) from None
    return int(moment.timestamp()) * 1000


def ddmmyy_hhmmss_ms(date: str, clock: str, name: str) -> int:
    """Epoch milliseconds of ``ddmmyy`` and ``hhmmss`` fields (UTC, 2000-2099)."""
    if not (len(date) == len(clock) == 6 and date.isdigit() and clock.isdigit()):
        message = f"{name} must be ddmmyy,hhmmss, got {date[:12]!r},{clock[:12]!r}"
        raise FrameError(message)
    return utc_ms(
        2000 + int(date[4:]), int(date[2:4]), int(date[:2]),
        int(clock[:2]), int(clock[2:4]), int(clock[4:]), name,
    )  # fmt: skip
