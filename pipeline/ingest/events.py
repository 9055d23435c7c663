"""Admit events that devices report themselves and make them durable in Kafka.

Some devices say more than where they are: an OwnTracks phone reports that it
entered or left one of its regions.  Such an event is checked like a fix (may the
caller report for the device?) and published to the ``events`` topic keyed by
device, so a device's events stay in order on one partition, next to the events
the streaming job derives.  :meth:`EventPublisher.publish` returns only once Kafka
acknowledged every event; otherwise :class:`~pipeline.kafka.KafkaUnavailable`
propagates and the caller must not tell the device its upload was taken.

Device events are rare (a few per device and day) and are not rate-limited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pipeline.ingest.payloads import Rejection
from pipeline.ingest.service import FixProducer
from pipeline.kafka import EVENTS, KafkaUnavailable
from pipeline.model import Event

__all__ = ["EventPublisher", "ScreenedEvents"]

MayReport = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class ScreenedEvents:
    """Events whose device may report, by index, and the ones refused."""

    admitted: list[tuple[int, Event]]
    rejected: list[Rejection]


class EventPublisher:
    """Checks the device of each event and publishes the events to ``topic``.

    ``producer`` is the ingest's :class:`~pipeline.kafka.DurableProducer`.  The
    counters ``accepted``, ``refused`` and ``kafka_failures`` are kept for metrics.
    """

    def __init__(self, producer: FixProducer, topic: str = EVENTS) -> None:
        self.producer = producer
        self.topic = topic
        self.accepted = 0
        self.refused = 0
        self.kafka_failures = 0

    async def screen(
        self, events: Sequence[tuple[int, Event]], may_report: MayReport
    ) -> ScreenedEvents:
        """Keep the events whose device ``may_report``; refuse the others (403)."""
        devices = list(dict.fromkeys(event.device for _, event in events))
        answers = await asyncio.gather(*(may_report(device) for device in devices))
        allowed = dict(zip(devices, answers, strict=True))

        admitted, rejected = [], []
        for index, event in events:
            if allowed[event.device]:
                admitted.append((index, event))
            else:
                rejected.append(_not_allowed(index, event.device))
        self.refused += len(rejected)
        return ScreenedEvents(admitted, rejected)

    async def publish(self, events: Sequence[Event]) -> None:
        """Send the events in one batch; return once Kafka acknowledged them all."""
        if not events:
            return
        records = [
            (event.device.encode(), event.SerializeToString()) for event in events
        ]
        try:
            await self.producer.send_many(self.topic, records)
        except KafkaUnavailable:
            self.kafka_failures += 1
            raise
        self.accepted += len(records)


def _not_allowed(index: int, device: str) -> Rejection:
    reason = f"device {device!r} is unknown or not yours to report for"
    return Rejection(index, reason, 403, "unknown_device")
