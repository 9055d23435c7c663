"""The notifier: events from Kafka to the e-mail and webhook channels of rules.

:class:`NotificationService` reads the ``events`` topic in the consumer group
``rastro-notify`` (instances split the partitions), finds the rules each event
reaches (:class:`~pipeline.notify.matching.RuleMatcher`) and offers one delivery
per rule and channel to that channel's queue
(:class:`~pipeline.notify.channels.ChannelQueue`).  Queues never make the consumer
wait, so a slow or failing SMTP server or webhook only loses its own oldest
deliveries, and the pipeline upstream never waits for any of it: the notifier is
just another reader of the topic.

Delivery guarantee: a batch's Kafka offsets are committed only after each of its
events was handed to the channel queues, so an event is handed over at least
once (a restart can announce an event twice; webhooks carry a stable id for
that).  What sits in a queue lives in memory: a crash loses it, and a graceful
stop gives the queues ``drain_s`` seconds to empty.

The ``web`` channel is not served here: the API's live WebSocket marks events
that match a user's web rules (see :mod:`pipeline.api.live`).

While PostgreSQL cannot answer, the consumer waits (retrying with back-off)
instead of skipping events; nothing is committed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import structlog

from pipeline.api.errors import DATABASE_DOWN
from pipeline.config import IPNetwork, parse_networks
from pipeline.kafka import EVENTS, KafkaUnavailable
from pipeline.model import Event
from pipeline.notify.channels import (
    ChannelQueue,
    Delivery,
    RetryPolicy,
    delivery_key,
)
from pipeline.notify.consumer import GroupConsumer
from pipeline.notify.mail import SmtpMailer, SmtpSettings
from pipeline.notify.matching import DeviceAudience, RuleMatcher
from pipeline.notify.messages import EventUndecodable, decode_event, event_document
from pipeline.notify.rules import EmailChannel
from pipeline.notify.webhook import WebhookSender

__all__ = ["GROUP", "NotificationService", "run_notifier"]

log = structlog.get_logger("rastro.notify")

GROUP: Final = "rastro-notify"
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0


class NotificationService:
    """Delivers the events of ``topic`` to the rules they reach.

    ``smtp`` ``None`` leaves e-mail off (:attr:`email` is ``None``): e-mail
    deliveries are counted in :attr:`email_unsent` and logged once.
    ``webhook_allowed_networks`` are the networks webhooks may reach besides
    public addresses.  ``queue_size``, ``*_workers`` and ``retry`` shape the
    channel queues; ``rules_ttl_s`` is how long a device's rules are cached.
    Run :meth:`run` as a task; ``ready`` is set once the consumer has its
    partitions.
    """

    def __init__(
        self,
        bootstrap: str,
        pool: asyncpg.Pool,
        *,
        smtp: SmtpSettings | None = None,
        topic: str = EVENTS,
        group: str = GROUP,
        rules_ttl_s: float = 10.0,
        queue_size: int = 1000,
        email_workers: int = 1,
        email_batch: int = 20,
        webhook_workers: int = 4,
        webhook_timeout_s: float = 10.0,
        webhook_allowed_networks: Sequence[IPNetwork] = (),
        retry: RetryPolicy | None = None,
        drain_s: float = 5.0,
    ) -> None:
        self.matcher = RuleMatcher(pool, ttl_s=rules_ttl_s)
        self.ready = asyncio.Event()
        self.consumer = GroupConsumer(
            bootstrap, topic, group, self.handle, ready=self.ready
        )
        self._webhook_sender = WebhookSender(
            timeout_s=webhook_timeout_s, allowed_networks=webhook_allowed_networks
        )
        self.webhook = ChannelQueue(
            "webhook",
            self._webhook_sender,
            workers=webhook_workers,
            queue_size=queue_size,
            retry=retry,
        )
        self.email: ChannelQueue | None = None
        if smtp is not None:
            self.email = ChannelQueue(
                "email",
                SmtpMailer(smtp),
                workers=email_workers,
                batch=email_batch,
                queue_size=queue_size,
                retry=retry,
            )
        self.drain_s = drain_s
        self.events = 0
        self.undecodable = 0
        self.email_unsent = 0

    async def run(self) -> None:
        """Consume and deliver until cancelled; then let the queues drain a while."""
        log.info(
            "notifier_started",
            topic=self.consumer.topic,
            group=self.consumer.group,
            email=self.email is not None,
        )
        queues = [queue for queue in (self.webhook, self.email) if queue]
        try:
            async with asyncio.TaskGroup() as tasks:
                workers = [tasks.create_task(queue.run()) for queue in queues]
                try:
                    await self._consume()
                finally:
                    await self._drain(queues)
                    for task in workers:
                        task.cancel()
        finally:
            await self._webhook_sender.aclose()
            log.info(
                "notifier_stopped",
                events=self.events,
                delivered=sum(queue.delivered for queue in queues),
                failed=sum(queue.failed for queue in queues),
                dropped=sum(queue.dropped for queue in queues),
            )

    async def handle(self, payloads: Sequence[bytes]) -> None:
        """Hand every event of one Kafka batch to the channel queues.

        Waits (retrying) while the database cannot say which rules apply, so no
        event is passed over; an undecodable payload is counted and skipped.
        """
        events = [event for event in map(self._decode, payloads) if event]
        if not events:
            return
        audiences = await self._audiences({event.device for event in events})

        for event in events:
            self.events += 1
            self._dispatch(event, audiences[event.device])

    def _decode(self, payload: bytes) -> Event | None:
        try:
            return decode_event(payload)
        except EventUndecodable as error:
            self.undecodable += 1
            log.warning("notify_event_undecodable", reason=str(error))
            return None

    async def _audiences(self, devices: set[str]) -> dict[str, DeviceAudience]:
        pause_s = _RETRY_FIRST_S
        while True:
            try:
                return await self.matcher.audiences(devices)
            except DATABASE_DOWN as error:
                log.warning(
                    "notify_rules_unavailable",
                    error=type(error).__name__,
                    retry_s=pause_s,
                )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, _RETRY_MAX_S)

    def _dispatch(self, event: Event, audience: DeviceAudience) -> None:
        document: dict[str, Any] | None = None
        for rule in audience.rules:
            if not rule.accepts(event.type):
                continue
            document = document or event_document(event)
            for channel in rule.channels:
                delivery = Delivery(
                    rule_id=rule.id,
                    rule_name=rule.name,
                    channel=channel,
                    device_name=audience.device_name,
                    event=document,
                    key=delivery_key(rule.id, channel, event),
                )
                self._offer(delivery)

    def _offer(self, delivery: Delivery) -> None:
        if not isinstance(delivery.channel, EmailChannel):
            self.webhook.offer(delivery)
        elif self.email is not None:
            self.email.offer(delivery)
        else:
            self.email_unsent += 1
            if self.email_unsent == 1:
                log.warning("notify_email_not_configured", rule=delivery.rule_id)

    async def _consume(self) -> None:
        pause_s = _RETRY_FIRST_S
        while True:
            batches = self.consumer.batches
            try:
                await self.consumer.run()
            except KafkaUnavailable as error:
                log.warning("notify_consumer_failed", reason=str(error))
            if self.consumer.batches > batches:
                pause_s = _RETRY_FIRST_S
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, _RETRY_MAX_S)

    async def _drain(self, queues: list[ChannelQueue]) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_s):
                await asyncio.gather(*(queue.drained() for queue in queues))


async def run_notifier(
    bootstrap: str,
    pool: asyncpg.Pool,
    *,
    smtp_host: str = "",
    smtp_port: int = 587,
    smtp_user: str = "",
    smtp_password: str = "",
    smtp_from: str = "",
    smtp_starttls: bool = True,
    smtp_implicit_tls: bool = False,
    webhook_allowed_networks: str = "",
    topic: str = EVENTS,
) -> None:
    """Run a :class:`NotificationService` until cancelled (``rastro serve``).

    ``smtp_host`` empty turns e-mail off; ``smtp_from`` empty sends as
    ``rastro@localhost``.  The password is never logged.
    ``webhook_allowed_networks`` is the setting's text (see
    :func:`pipeline.config.parse_networks`).
    """
    smtp = None
    if smtp_host:
        smtp = SmtpSettings(
            host=smtp_host,
            port=smtp_port,
            starttls=smtp_starttls,
            implicit_tls=smtp_implicit_tls,
            user=smtp_user,
            password=smtp_password,
            sender=smtp_from or "rastro@localhost",
        )
    service = NotificationService(
        bootstrap,
        pool,
        smtp=smtp,
        topic=topic,
        webhook_allowed_networks=parse_networks(webhook_allowed_networks),
    )
    await service.run()
