"""Database answers kept a short while, so that a hot path asks once per key.

Ingest asks who owns a device for every batch, the notifier which rules an event
reaches: both read rows that change rarely, for keys that repeat all the time.
:class:`ExpiringAnswers` keeps each key's answer ``ttl_s`` seconds, drops the least
recently used beyond ``max_entries``, and fetches every missing key of a lookup in
one query.  An answer of "nothing there" is kept like any other.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["ExpiringAnswers"]

_V = TypeVar("_V")

#: Fetches the answers of the keys given; a key it leaves out has ``missing``.
Fetch = Callable[[list[str]], Awaitable[dict[str, _V]]]


class ExpiringAnswers(Generic[_V]):
    """Answers by key, each for ``ttl_s`` seconds, at most ``max_entries`` of them.

    The owner checks both limits (its error messages name its own settings).
    """

    def __init__(self, ttl_s: float, max_entries: int, missing: _V) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._missing = missing
        self._answers: OrderedDict[str, tuple[float, _V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    async def lookup(self, keys: Iterable[str], fetch: Fetch[_V]) -> dict[str, _V]:
        """The answer for each distinct key; one ``fetch`` for those not held.

        What ``fetch`` raises propagates, and nothing is kept then.
        """
        now = time.monotonic()
        answers: dict[str, _V] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):
            held = self._answers.get(key)
            if held is not None and held[0] > now:
                self._answers.move_to_end(key)
                answers[key] = held[1]
            else:
                missing.append(key)

        if missing:
            found = await fetch(missing)
            for key in missing:
                answers[key] = found.get(key, self._missing)
                self._keep(key, answers[key], now)
        return answers

    def forget(self, key: str | None = None) -> None:
        """Drop one key's answer, or every answer."""
        if key is None:
            self._answers.clear()
        else:
            self._answers.pop(key, None)

    def _keep(self, key: str, answer: _V, now: float) -> None:
        self._answers[key] = (now + self.ttl_s, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
