"""ExpiringAnswers: one fetch per lookup for the keys not held, expiry, LRU bound."""

from __future__ import annotations

import pytest

from pipeline.store.expiring import ExpiringAnswers


class Source:
    """A fetch that records each call and knows a fixed set of answers."""

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known
        self.calls: list[list[str]] = []

    async def fetch(self, keys: list[str]) -> dict[str, int | None]:
        self.calls.append(keys)
        return {key: self.known[key] for key in keys if key in self.known}


async def test_lookup_fetches_missing_keys_once() -> None:
    source = Source({"a": 1, "b": 2})
    answers: ExpiringAnswers[int | None] = ExpiringAnswers(60.0, 10, missing=None)

    first = await answers.lookup(["a", "b", "a", "z"], source.fetch)
    second = await answers.lookup(["b", "z", "c"], source.fetch)

    assert first == {"a": 1, "b": 2, "z": None}
    assert second == {"b": 2, "z": None, "c": None}
    assert source.calls == [["a", "b", "z"], ["c"]]


async def test_answers_expire_after_ttl() -> None:
    source = Source({"a": 1})
    answers: ExpiringAnswers[int | None] = ExpiringAnswers(0.0, 10, missing=None)

    await answers.lookup(["a"], source.fetch)
    source.known["a"] = 7

    assert await answers.lookup(["a"], source.fetch) == {"a": 7}
    assert len(source.calls) == 2


async def test_least_recently_used_dropped_beyond_bound() -> None:
    source = Source({"a": 1, "b": 2, "c": 3})
    answers: ExpiringAnswers[int | None] = ExpiringAnswers(60.0, 2, missing=None)
    await answers.lookup(["a", "b"], source.fetch)
    await answers.lookup(["a"], source.fetch)  # a is now the most recent

    await answers.lookup(["c"], source.fetch)
    await answers.lookup(["a", "b"], source.fetch)

    assert len(answers) == 2
    assert source.calls[-1] == ["b"]


async def test_failed_fetch_keeps_nothing() -> None:
    async def down(keys: list[str]) -> dict[str, int | None]:
        raise ConnectionError("database down")

    answers: ExpiringAnswers[int | None] = ExpiringAnswers(60.0, 10, missing=None)

    with pytest.raises(ConnectionError, match="database down"):
        await answers.lookup(["a"], down)

    assert len(answers) == 0


async def test_forget_one_or_all() -> None:
    source = Source({"a": 1, "b": 2})
    answers: ExpiringAnswers[int | None] = ExpiringAnswers(60.0, 10, missing=None)
    await answers.lookup(["a", "b"], source.fetch)

    answers.forget("a")
    await answers.lookup(["a", "b"], source.fetch)
    answers.forget()
    await answers.lookup(["b"], source.fetch)

    assert source.calls == [["a", "b"], ["a"], ["b"]]
