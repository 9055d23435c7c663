"""Channel queues: bounded, dropping the oldest, retrying without holding a worker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from structlog.testing import capture_logs

from pipeline.model import Event
from pipeline.notify.channels import (
    ChannelQueue,
    Delivery,
    Failure,
    RetryPolicy,
    delivery_key,
)
from pipeline.notify.rules import EmailChannel, WebhookChannel

SECRET = "channel-test-secret-0123456789"
HOOK = WebhookChannel("https://hooks.example.com/t/abc", SECRET)


def _delivery(number: int, channel: EmailChannel | WebhookChannel = HOOK) -> Delivery:
    return Delivery(
        rule_id=number,
        rule_name=f"rule {number}",
        channel=channel,
        device_name="van",
        event={"uniqueId": "v1", "type": "alarm", "time": "2026-03-01T08:00:00Z"},
        key=f"key-{number}",
    )


class Recorder:
    """A sender answering from a script of outcomes, recording what it was given."""

    def __init__(self, *outcomes: Failure | None, gate: asyncio.Event | None = None):
        self.outcomes = list(outcomes)
        self.gate = gate
        self.batches: list[list[int]] = []
        self.times: list[float] = []

    async def __call__(self, batch: Sequence[Delivery]) -> list[Failure | None]:
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append([delivery.rule_id for delivery in batch])
        self.times.append(time.monotonic())
        return [self.outcomes.pop(0) if self.outcomes else None for _ in batch]


@contextlib.asynccontextmanager
async def running(queue: ChannelQueue) -> AsyncIterator[ChannelQueue]:
    task = asyncio.create_task(queue.run())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(condition: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.005)


class TestOverflow:
    async def test_full_queue_drops_oldest(self) -> None:
        gate = asyncio.Event()
        sender = Recorder(gate=gate)
        queue = ChannelQueue("webhook", sender, workers=1, queue_size=2)

        async with running(queue):
            queue.offer(_delivery(1))
            await asyncio.sleep(0.01)  # the worker holds 1, waiting at the gate
            for number in range(2, 6):
                queue.offer(_delivery(number))
            gate.set()
            await _until(lambda: queue.delivered == 3)

        assert sender.batches == [[1], [4], [5]]
        assert (queue.offered, queue.dropped) == (5, 2)

    async def test_overflow_logged_once_per_interval(self) -> None:
        queue = ChannelQueue("email", Recorder(), workers=1, queue_size=1)

        with capture_logs() as logs:
            for number in range(10):
                queue.offer(_delivery(number))

        full = [entry for entry in logs if entry["event"] == "notify_queue_full"]
        assert queue.dropped == 9
        assert len(full) == 1
        assert full[0]["log_level"] == "warning"


class TestRetry:
    async def test_retry_backs_off_then_delivers(self) -> None:
        failing = Failure("HTTP 503", retry=True)
        sender = Recorder(failing, failing, None)
        policy = RetryPolicy(attempts=5, base_s=0.05, max_s=1.0, jitter=0.0)
        queue = ChannelQueue("webhook", sender, retry=policy)
        delivery = _delivery(1)

        async with running(queue):
            queue.offer(delivery)
            await _until(lambda: queue.delivered == 1)

        gaps = [later - earlier for earlier, later in itertools.pairwise(sender.times)]
        assert delivery.attempts == 3
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1
        assert (queue.failed, queue.retried) == (0, 2)

    async def test_waiting_retry_frees_worker(self) -> None:
        """A delivery waiting to retry does not hold up the next one."""
        sender = Recorder(Failure("timeout", retry=True), None, None)
        policy = RetryPolicy(attempts=3, base_s=2.0, max_s=2.0, jitter=0.0)
        queue = ChannelQueue("webhook", sender, workers=1, retry=policy)

        async with running(queue):
            queue.offer(_delivery(1))
            queue.offer(_delivery(2))
            await _until(lambda: queue.delivered == 1, timeout_s=1.0)

            assert sender.batches == [[1], [2]]
            assert queue.waiting == 1

    async def test_permanent_failure_logged_once(self) -> None:
        sender = Recorder(Failure("HTTP 404", retry=False))
        queue = ChannelQueue("webhook", sender)

        with capture_logs() as logs:
            async with running(queue):
                queue.offer(_delivery(1))
                await _until(lambda: queue.failed == 1)

        errors = [entry for entry in logs if entry["log_level"] == "error"]
        assert errors == [
            {
                "event": "notification_dropped",
                "log_level": "error",
                "channel": "webhook",
                "rule": 1,
                "rule_name": "rule 1",
                "destination": "hooks.example.com",
                "attempts": 1,
                "reason": "HTTP 404",
            }
        ]
        assert SECRET not in repr(logs)
        assert "/t/abc" not in repr(logs)

    async def test_retries_exhausted_dropped(self) -> None:
        failing = Failure("ConnectError", retry=True)
        sender = Recorder(failing, failing, failing)
        policy = RetryPolicy(attempts=3, base_s=0.01, jitter=0.0)
        queue = ChannelQueue("email", sender, retry=policy)
        delivery = _delivery(1, EmailChannel("ops@example.com"))

        with capture_logs() as logs:
            async with running(queue):
                queue.offer(delivery)
                await _until(lambda: queue.failed == 1)

        dropped = [entry for entry in logs if entry["event"] == "notification_dropped"]
        assert [entry["attempts"] for entry in dropped] == [3]
        assert dropped[0]["destination"] == "example.com"
        assert "ops@example.com" not in repr(logs)

    async def test_crashing_sender_retried(self) -> None:
        calls = 0

        async def crashing(batch: Sequence[Delivery]) -> list[Failure | None]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError(SECRET)
            return [None] * len(batch)

        policy = RetryPolicy(attempts=2, base_s=0.01, jitter=0.0)
        queue = ChannelQueue("webhook", crashing, retry=policy)

        with capture_logs() as logs:
            async with running(queue):
                queue.offer(_delivery(1))
                await _until(lambda: queue.delivered == 1)

        assert calls == 2
        assert SECRET not in repr(logs)
        assert [e["error"] for e in logs if e["event"] == "notify_sender_failed"] == [
            "RuntimeError"
        ]


class TestBatches:
    async def test_worker_takes_batches(self) -> None:
        gate = asyncio.Event()
        sender = Recorder(gate=gate)
        queue = ChannelQueue("email", sender, workers=1, batch=3)

        async with running(queue):
            queue.offer(_delivery(1))
            await asyncio.sleep(0.01)
            for number in range(2, 7):
                queue.offer(_delivery(number))
            gate.set()
            await _until(lambda: queue.delivered == 6)
            await queue.drained()

        assert sender.batches == [[1], [2, 3, 4], [5, 6]]

    def test_queue_sizes_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="must be at least 1, got 0, 1, 1000"):
            ChannelQueue("email", Recorder(), workers=0)


class TestRetryPolicy:
    def test_pause_doubles_to_ceiling(self) -> None:
        policy = RetryPolicy(attempts=10, base_s=2.0, max_s=20.0, jitter=0.0)

        pauses = [policy.pause_s(failed, 0.0) for failed in range(1, 6)]

        assert pauses == [2.0, 4.0, 8.0, 16.0, 20.0]

    def test_jitter_shortens_pause(self) -> None:
        policy = RetryPolicy(base_s=4.0, jitter=0.5)

        assert policy.pause_s(1, 0.0) == 4.0
        assert policy.pause_s(1, 0.999) == pytest.approx(2.002)

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"attempts": 0}, "attempts must be at least 1, got 0"),
            ({"base_s": 0.0}, "base_s must be positive and max_s at least base_s"),
            ({"base_s": 5.0, "max_s": 1.0}, "max_s at least base_s, got base_s=5.0"),
            ({"jitter": 1.5}, "jitter must be from 0 to 1, got 1.5"),
        ],
    )
    def test_policy_refuses(self, arguments: dict[str, float], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            RetryPolicy(**arguments)  # type: ignore[arg-type]


class TestDeliveryKey:
    def test_key_stable_and_distinct(self) -> None:
        event = Event(device="v1", type="alarm", event_time_ms=1_772_352_000_000)
        later = Event(device="v1", type="alarm", event_time_ms=1_772_352_000_001)

        key = delivery_key(3, HOOK, event)

        assert key == delivery_key(3, HOOK, Event.FromString(event.SerializeToString()))
        assert len(key) == 32
        assert key != delivery_key(3, HOOK, later)
        assert key != delivery_key(4, HOOK, event)
        assert key != delivery_key(3, EmailChannel("a@b.org"), event)
