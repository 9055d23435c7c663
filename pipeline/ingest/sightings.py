"""Which identifiers were already logged, so that each is logged once.

A device that is not registered keeps sending; logging every one of its requests
would bury everything else.  :class:`FirstSightings` remembers the last
``capacity`` identifiers it saw (least recently seen forgotten first), so memory
stays bounded however many strangers call.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["FirstSightings"]

DEFAULT_CAPACITY = 10_000


class FirstSightings:
    """Answers whether an identifier is seen for the first time (of late)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            message = f"capacity must be at least 1, got {capacity!r}"
            raise ValueError(message)
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is seen, False while it is remembered."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True
