"""Admit decoded fixes and make them durable in Kafka: what every ingest path shares.

:meth:`IngestService.accept` checks each record (may this caller report for the
device? is the device within its rate?), publishes every admitted record in one
``send_many`` keyed by device (so a device's fixes stay in order on one partition)
with the fix time in a header (:func:`event_time_ms`: the streaming job's
watermarks follow it), and returns only once Kafka acknowledged them all.  If Kafka
did not acknowledge, :class:`~pipeline.kafka.KafkaUnavailable` propagates and the
caller must not tell the device its upload was taken (HTTP 503, no MQTT PUBACK).

The two steps are also offered apart, :meth:`IngestService.screen` and
:meth:`IngestService.publish`, so that a caller retrying a failed publish (the MQTT
bridge) does not spend the devices' rate tokens twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from pipeline.ingest.directory import DeviceDirectory
from pipeline.ingest.limiter import DeviceRateLimiter
from pipeline.ingest.payloads import Rejection
from pipeline.kafka import (
    POSITIONS,
    Headers,
    KafkaUnavailable,
    fix_time_headers,
)
from pipeline.model import Fix

__all__ = [
    "FixProducer",
    "IngestResult",
    "IngestService",
    "KafkaUnavailable",
    "Rejection",
    "Screened",
    "event_time_ms",
]

log = structlog.get_logger("rastro.ingest")

MayReport = Callable[[str], Awaitable[bool]]


class FixProducer(Protocol):
    """What ingest needs of a producer (:class:`pipeline.kafka.DurableProducer`)."""

    async def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        *,
        headers: Sequence[Headers] | None = None,
    ) -> None: ...


def event_time_ms(fix: Fix, now_ms: int) -> int:
    """The fix time a record carries for the job: its fix time, never ahead of now.

    It goes in the :data:`~pipeline.kafka.FIX_TIME_HEADER` header.

    The streaming job's watermark follows these times (per partition), so a
    device whose clock runs ahead must not carry it forward: such a fix, or one
    without a time, carries the time it arrived (the job still judges its own
    time).

    >>> event_time_ms(Fix(fix_time_ms=1_000), now_ms=5_000)
    1000
    >>> event_time_ms(Fix(fix_time_ms=9_000), now_ms=5_000)
    5000
    >>> event_time_ms(Fix(), now_ms=5_000)
    5000
    """
    if 0 < fix.fix_time_ms <= now_ms:
        return int(fix.fix_time_ms)
    return now_ms


@dataclass(frozen=True)
class IngestResult:
    """How many records Kafka acknowledged, and the ones refused (by index)."""

    accepted: int
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class Screened:
    """Records that passed the checks, and the ones that did not."""

    admitted: list[tuple[int, Fix]]
    rejected: list[Rejection]


class IngestService:
    """Checks, rate-limits and publishes fixes to ``topic`` (see the module doc).

    ``directory`` answers whether a device is registered (:meth:`known_device`, the
    check of device-facing protocols).  ``limiter`` is optional: without it no rate
    limit applies.  Counters ``accepted`` and ``rejected`` (by kind) are kept for
    metrics.
    """

    def __init__(
        self,
        producer: FixProducer,
        directory: DeviceDirectory | None,
        limiter: DeviceRateLimiter | None = None,
        topic: str = POSITIONS,
    ) -> None:
        self.producer = producer
        self.directory = directory
        self.limiter = limiter
        self.topic = topic
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.kafka_failures = 0

    async def known_device(self, unique_id: str) -> bool:
        """Whether the device is registered; every device is, without a directory."""
        if self.directory is None:
            return True
        return await self.directory.is_known(unique_id)

    async def accept(
        self,
        fixes: Sequence[tuple[int, Fix]],
        may_report: MayReport,
        *,
        rejected: Sequence[Rejection] = (),
    ) -> IngestResult:
        """Check each record, publish the admitted ones, return once Kafka acked.

        ``rejected`` are records the caller already refused (undecodable ones):
        they are counted and returned with the others.  Raises
        :class:`~pipeline.kafka.KafkaUnavailable` when Kafka did not acknowledge.
        """
        screened = await self.screen(fixes, may_report, rejected=rejected)
        await self.publish(screened.admitted)
        return IngestResult(len(screened.admitted), screened.rejected)

    async def screen(
        self,
        fixes: Sequence[tuple[int, Fix]],
        may_report: MayReport,
        *,
        rejected: Sequence[Rejection] = (),
    ) -> Screened:
        """Apply the device and rate checks; count what is refused."""
        refused = list(rejected)
        allowed = await self._allowed_devices(fixes, may_report)
        permitted = []
        for index, fix in fixes:
            if allowed[fix.device]:
                permitted.append((index, fix))
            else:
                refused.append(_not_allowed(index, fix.device))

        admitted, limited = await self._within_rate(permitted)
        refused.extend(limited)
        refused.sort(key=lambda rejection: rejection.index)
        self.rejected.update(rejection.kind for rejection in refused)
        return Screened(admitted, refused)

    async def publish(self, admitted: Sequence[tuple[int, Fix]]) -> None:
        """Send the fixes to Kafka in one batch; return once all are acknowledged."""
        if not admitted:
            return
        records = [
            (fix.device.encode(), fix.SerializeToString()) for _, fix in admitted
        ]
        now_ms = time.time_ns() // 1_000_000
        headers = [fix_time_headers(event_time_ms(fix, now_ms)) for _, fix in admitted]
        try:
            await self.producer.send_many(self.topic, records, headers=headers)
        except KafkaUnavailable:
            self.kafka_failures += 1
            raise
        self.accepted += len(records)

    def counters(self) -> dict[str, int]:
        """The counters as flat names, for a metrics endpoint."""
        values = {"accepted": self.accepted, "kafka_failures": self.kafka_failures}
        values.update({f"rejected_{kind}": n for kind, n in self.rejected.items()})
        return values

    async def _allowed_devices(
        self, fixes: Sequence[tuple[int, Fix]], may_report: MayReport
    ) -> dict[str, bool]:
        devices = list(dict.fromkeys(fix.device for _, fix in fixes))
        if self.directory is not None and len(devices) > 1:
            await self.directory.owners_of(devices)  # warm the cache in one query
        answers = await asyncio.gather(*(may_report(device) for device in devices))
        return dict(zip(devices, answers, strict=True))

    async def _within_rate(
        self, permitted: list[tuple[int, Fix]]
    ) -> tuple[list[tuple[int, Fix]], list[Rejection]]:
        if self.limiter is None or not permitted:
            return permitted, []
        wanted = Counter(fix.device for _, fix in permitted)
        granted = await self.limiter.allow_many(wanted)

        admitted, limited = [], []
        for index, fix in permitted:
            if granted[fix.device] > 0:
                granted[fix.device] -= 1
                admitted.append((index, fix))
            else:
                limited.append(_rate_limited(index, fix.device, self.limiter.rate))
        return admitted, limited


def _not_allowed(index: int, device: str) -> Rejection:
    reason = f"device {device!r} is unknown or not yours to report for"
    return Rejection(index, reason, 403, "unknown_device")


def _rate_limited(index: int, device: str, rate: float) -> Rejection:
    reason = f"device {device!r} is over its rate of {rate:g} messages per second"
    return Rejection(index, reason, 429, "rate_limited")
