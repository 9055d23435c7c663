"""Delivery queues: one per channel, bounded, with workers and retries of their own.

The notifier hands each :class:`Delivery` to its channel's :class:`ChannelQueue`
with :meth:`~ChannelQueue.offer`, which never waits: when the queue is full the
oldest pending delivery is dropped and counted.  So a channel whose server is
down or slow fills its own queue and loses its own oldest messages, while the
Kafka consumer and the other channels go on.

Workers take deliveries (up to ``batch`` at once, e.g. one SMTP session for several
e-mails) and hand them to the channel's sender, which answers ``None`` per delivery
that went through or a :class:`Failure`.  A failure that may pass (a timeout, a
5xx) is tried again after an exponential back-off with jitter
(:class:`RetryPolicy`), without holding a worker while it waits; a failure that
will not pass (a 4xx, a refused recipient), or the last allowed attempt, drops the
delivery with one ERROR line naming the rule and the destination's host or mail
domain, never a URL, an address or a secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from pipeline.model import Event
from pipeline.notify.rules import EmailChannel, WebhookChannel

__all__ = [
    "ChannelQueue",
    "Delivery",
    "Failure",
    "RetryPolicy",
    "Sender",
    "delivery_key",
]

log = structlog.get_logger("rastro.notify")

# At most one "queue full" warning per channel in this many seconds.
OVERFLOW_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Failure:
    """Why a delivery did not go through, and whether trying again may help."""

    reason: str
    retry: bool


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart a failing delivery is tried.

    ``attempts`` counts every try, the first included.  The pause after the n-th
    failed try is ``min(max_s, base_s * 2 ** (n - 1))`` seconds, shortened by a
    random share of up to ``jitter`` (0 to 1) so that deliveries that failed
    together do not all come back at once.  The defaults try 8 times over about
    eight minutes.
    """

    attempts: int = 8
    base_s: float = 2.0
    max_s: float = 600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            message = f"attempts must be at least 1, got {self.attempts!r}"
            raise ValueError(message)
        if self.base_s <= 0 or self.max_s < self.base_s:
            message = (
                f"base_s must be positive and max_s at least base_s, got "
                f"base_s={self.base_s!r}, max_s={self.max_s!r}"
            )
            raise ValueError(message)
        if not 0 <= self.jitter <= 1:
            message = f"jitter must be from 0 to 1, got {self.jitter!r}"
            raise ValueError(message)

    def pause_s(self, failed: int, draw: float) -> float:
        """Seconds to wait after ``failed`` tries failed; ``draw`` is in [0, 1)."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** (failed - 1))
        return ceiling * (1 - self.jitter * draw)


@dataclass(eq=False)
class Delivery:
    """One event on its way to one channel of one rule.

    ``key`` is the same for every try and every re-read of the event from Kafka
    (see :func:`delivery_key`), so a receiver can drop a duplicate.  ``event`` is
    the event's JSON form (:func:`pipeline.notify.messages.event_document`).
    """

    rule_id: int
    rule_name: str
    channel: EmailChannel | WebhookChannel
    device_name: str
    event: dict[str, Any]
    key: str
    attempts: int = 0
    created: float = field(default_factory=time.monotonic)

    @property
    def destination(self) -> str:
        """What logs may name: the webhook's host or the address's mail domain."""
        if isinstance(self.channel, WebhookChannel):
            return self.channel.host
        return self.channel.address.rpartition("@")[2]


def delivery_key(
    rule_id: int, channel: EmailChannel | WebhookChannel, event: Event
) -> str:
    """A stable id of one event to one channel of one rule (hex, 32 characters).

    The event is known by its device, type and time, as in the ``events`` table.
    """
    target = channel.url if isinstance(channel, WebhookChannel) else channel.address
    parts = (rule_id, channel.kind, target, event.device, event.type)
    text = "\x1f".join(str(part) for part in (*parts, event.event_time_ms))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


Sender = Callable[[Sequence[Delivery]], Awaitable[list[Failure | None]]]


class ChannelQueue:
    """A bounded queue of deliveries for one channel, and the workers that send.

    ``queue_size`` bounds the deliveries waiting for a worker and, separately,
    those waiting out a retry pause; past either bound the oldest is dropped and
    counted in :attr:`dropped`.  Run :meth:`run` as a task; cancelling it stops
    the workers and forgets pending retries.
    """

    def __init__(
        self,
        name: str,
        sender: Sender,
        *,
        workers: int = 2,
        batch: int = 1,
        queue_size: int = 1000,
        retry: RetryPolicy | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if workers < 1 or batch < 1 or queue_size < 1:
            message = (
                f"workers, batch and queue_size must be at least 1, got "
                f"{workers!r}, {batch!r}, {queue_size!r}"
            )
            raise ValueError(message)
        self.name = name
        self._sender = sender
        self._workers = workers
        self._batch = batch
        self._queue_size = queue_size
        self.retry = retry or RetryPolicy()
        self._draw = draw
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(queue_size)
        self._waiting: OrderedDict[Delivery, asyncio.TimerHandle] = OrderedDict()
        self._overflow_logged = -OVERFLOW_LOG_INTERVAL_S
        self.offered = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.retried = 0

    @property
    def pending(self) -> int:
        """Deliveries queued for a worker (not counting those waiting to retry)."""
        return self._queue.qsize()

    @property
    def waiting(self) -> int:
        """Deliveries waiting out a retry pause."""
        return len(self._waiting)

    def offer(self, delivery: Delivery) -> None:
        """Queue a delivery without waiting; drop the oldest one when full."""
        self.offered += 1
        self._put(delivery)

    async def run(self) -> None:
        """Run the workers until cancelled."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for number in range(self._workers):
                    tasks.create_task(self._work(), name=f"notify-{self.name}-{number}")
        finally:
            for handle in self._waiting.values():
                handle.cancel()
            self._waiting.clear()

    async def drained(self) -> None:
        """Return once every queued delivery was sent or given up on for now."""
        await self._queue.join()

    def _put(self, delivery: Delivery) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()
            self._overflowed()
        self._queue.put_nowait(delivery)

    def _overflowed(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._overflow_logged >= OVERFLOW_LOG_INTERVAL_S:
            self._overflow_logged = now
            log.warning(
                "notify_queue_full",
                channel=self.name,
                dropped=self.dropped,
                queue_size=self._queue_size,
            )

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self._send(batch)
                for delivery, outcome in zip(batch, outcomes, strict=True):
                    self._settle(delivery, outcome)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _send(self, batch: list[Delivery]) -> list[Failure | None]:
        for delivery in batch:
            delivery.attempts += 1
        try:
            outcomes = await self._sender(batch)
        except Exception as error:  # a sender's bug must not stop the channel
            # No traceback: a renderer that shows locals could show a secret.
            log.error(
                "notify_sender_failed", channel=self.name, error=type(error).__name__
            )
            return [Failure(type(error).__name__, retry=True)] * len(batch)
        if len(outcomes) != len(batch):
            log.error("notify_sender_miscounted", channel=self.name)
            return [Failure("sender answered for too few", retry=True)] * len(batch)
        return outcomes

    def _settle(self, delivery: Delivery, outcome: Failure | None) -> None:
        if outcome is None:
            self.delivered += 1
            log.debug(
                "notification_delivered",
                channel=self.name,
                rule=delivery.rule_id,
                destination=delivery.destination,
                attempts=delivery.attempts,
            )
            return
        if outcome.retry and delivery.attempts < self.retry.attempts:
            self._retry_later(delivery)
            return
        self.failed += 1
        log.error(
            "notification_dropped",
            channel=self.name,
            rule=delivery.rule_id,
            rule_name=delivery.rule_name,
            destination=delivery.destination,
            attempts=delivery.attempts,
            reason=outcome.reason,
        )

    def _retry_later(self, delivery: Delivery) -> None:
        pause_s = self.retry.pause_s(delivery.attempts, self._draw())
        loop = asyncio.get_running_loop()
        self._waiting[delivery] = loop.call_later(pause_s, self._retry_due, delivery)
        self.retried += 1
        if len(self._waiting) > self._queue_size:
            _oldest, handle = self._waiting.popitem(last=False)
            handle.cancel()
            self._overflowed()

    def _retry_due(self, delivery: Delivery) -> None:
        if self._waiting.pop(delivery, None) is not None:
            self._put(delivery)
