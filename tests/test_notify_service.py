"""The notifier end to end: events on a real Kafka topic, rules in a real
PostgreSQL, e-mail to a real SMTP server and webhooks to a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from pipeline.config import parse_networks
from pipeline.kafka import DurableProducer
from pipeline.model import Event
from pipeline.notify import store
from pipeline.notify.channels import RetryPolicy
from pipeline.notify.mail import SmtpSettings
from pipeline.notify.rules import parse_rule
from pipeline.notify.service import NotificationService, run_notifier
from pipeline.services.postgres import SystemPostgres
from pipeline.store.migrations import migrate
from tests.fixtures.api import Caller, make_caller, running_api, unique_id
from tests.fixtures.notify import SmtpSink, WebhookReceiver
from tests.fixtures.services import start_on_free_port

pytestmark = pytest.mark.integration

SECRET = "service-secret-0123456789abcdef"
T0_MS = 1_772_352_000_000


async def _device(pool: asyncpg.Pool, owner: Caller, group: int | None = None) -> int:
    device_id = await pool.fetchval(
        "INSERT INTO devices (unique_id, name, owner_id, group_id)"
        " VALUES ($1, $2, $3, $4) RETURNING id",
        unique_id(),
        f"{owner.user.name}'s van",
        owner.user.id,
        group,
    )
    return int(device_id)


async def _unique_id(pool: asyncpg.Pool, device_id: int) -> str:
    return str(
        await pool.fetchval("SELECT unique_id FROM devices WHERE id = $1", device_id)
    )


async def _rule(pool: asyncpg.Pool, owner: Caller, **body: Any) -> int:
    spec = parse_rule({"name": f"{owner.user.name} rule", **body})
    rule = await store.create_rule(pool, owner.user.id, spec)
    return rule.id


def _event(device: str, kind: str, second: int = 0) -> bytes:
    event = Event(
        device=device,
        type=kind,
        event_time_ms=T0_MS + second * 1000,
        latitude=48.137,
        longitude=11.575,
    )
    event.attributes["alarm"] = '"sos"'
    return event.SerializeToString()


async def _publish(bootstrap: str, topic: str, *payloads: bytes) -> None:
    """Write payloads keyed by device, as ingest and the streaming job do."""
    records = []
    for payload in payloads:
        try:
            key = Event.FromString(payload).device.encode()
        except Exception:  # protobuf's DecodeError: the undecodable test payload
            key = b"garbage"
        records.append((key, payload))
    async with DurableProducer(bootstrap) as producer:
        await producer.send_many(topic, records)


@contextlib.asynccontextmanager
async def notifier(
    bootstrap: str,
    pool: asyncpg.Pool,
    topic: str,
    sink: SmtpSink,
    *,
    group: str | None = None,
    **options: Any,
) -> AsyncIterator[NotificationService]:
    settings = SmtpSettings("127.0.0.1", sink.port, starttls=False, timeout_s=5)
    service = NotificationService(
        bootstrap,
        pool,
        smtp=settings,
        topic=topic,
        group=group or f"test-notify-{uuid.uuid4().hex[:8]}",
        retry=RetryPolicy(attempts=3, base_s=0.1, max_s=1.0),
        drain_s=1.0,
        # The test receivers listen on loopback.
        webhook_allowed_networks=parse_networks("127.0.0.0/8"),
        **options,
    )
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), timeout=60)
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _mail_to(sink: SmtpSink) -> dict[str, list[str]]:
    """Subjects received per recipient."""
    found: dict[str, list[str]] = {}
    for mail in sink.received:
        for recipient in mail.recipients:
            found.setdefault(recipient, []).append(str(mail.message["Subject"]))
    return found


async def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


class TestRouting:
    async def test_events_reach_right_users_only(
        self,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
        admin: Caller,
    ) -> None:
        """Each event reaches its owner's matching rules and the admin's, no one
        else's; types, devices, groups and disabled rules are honoured."""
        topic = kafka_topic(partitions=3)
        group = int(
            await api_pool.fetchval(
                "INSERT INTO device_groups (owner_id, name) VALUES ($1, 'g')"
                " RETURNING id",
                bob.user.id,
            )
        )
        alices = await _unique_id(api_pool, await _device(api_pool, alice))
        bobs = await _unique_id(api_pool, await _device(api_pool, bob, group))
        bobs_other = await _unique_id(api_pool, await _device(api_pool, bob))
        receiver = WebhookReceiver()

        async with SmtpSink() as sink, running_api(receiver.app) as base:
            hook = {"type": "webhook", "url": f"{base}/hook", "secret": SECRET}
            await _rule(
                api_pool,
                alice,
                channels=[{"type": "email", "address": "alice@example.com"}, hook],
            )
            await _rule(
                api_pool,
                bob,
                eventTypes=["geofenceEnter"],
                groups=[group],
                channels=[{"type": "email", "address": "bob@example.com"}],
            )
            await _rule(
                api_pool,
                bob,
                enabled=False,
                channels=[{"type": "email", "address": "bob-off@example.com"}],
            )
            await _rule(
                api_pool,
                admin,
                eventTypes=["alarm"],
                channels=[{"type": "email", "address": "admin@example.com"}],
            )
            async with notifier(kafka_bootstrap, api_pool, topic, sink) as service:
                await _publish(
                    kafka_bootstrap,
                    topic,
                    _event(alices, "alarm", 1),
                    _event(bobs, "alarm", 2),
                    _event(bobs, "geofenceEnter", 3),
                    _event(bobs_other, "geofenceEnter", 4),
                    _event("never-registered", "alarm", 5),
                    b"\xff\xff not an event",
                )
                await sink.wait_for(4)
                await receiver.wait_for(1)
                await _until(lambda: service.events == 5)
                await asyncio.sleep(0.5)  # anything extra would arrive by now

        # Events of different devices may sit on different partitions: no order.
        assert {to: sorted(subjects) for to, subjects in _mail_to(sink).items()} == {
            "alice@example.com": ["Rastro: alarm - alice's van"],
            "bob@example.com": ["Rastro: geofenceEnter - bob's van"],
            "admin@example.com": [
                "Rastro: alarm - alice's van",
                "Rastro: alarm - bob's van",
            ],
        }
        assert len(receiver.calls) == 1
        body = json.loads(receiver.calls[0].body)
        assert (body["event"]["uniqueId"], body["event"]["type"]) == (alices, "alarm")
        assert body["event"]["attributes"] == {"alarm": "sos"}
        assert service.undecodable == 1

    async def test_rule_change_seen_after_ttl(
        self,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        api_pool: asyncpg.Pool,
        alice: Caller,
    ) -> None:
        topic = kafka_topic()
        device = await _unique_id(api_pool, await _device(api_pool, alice))

        async with (
            SmtpSink() as sink,
            notifier(
                kafka_bootstrap, api_pool, topic, sink, rules_ttl_s=0.3
            ) as service,
        ):
            await _publish(kafka_bootstrap, topic, _event(device, "idle", 1))
            await _until(lambda: service.events == 1)
            await _rule(
                api_pool,
                alice,
                channels=[{"type": "email", "address": "alice@example.com"}],
            )
            await asyncio.sleep(0.4)
            await _publish(kafka_bootstrap, topic, _event(device, "idle", 2))
            mails = await sink.wait_for(1)

        assert len(mails) == 1
        assert "at 2026-03-01T08:00:02Z" in mails[0].message.get_content()


class TestIsolation:
    async def test_stuck_webhook_does_not_delay_email(
        self,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        api_pool: asyncpg.Pool,
        alice: Caller,
    ) -> None:
        """A webhook that never answers and one that always fails: e-mail for
        every event still arrives at once."""
        topic = kafka_topic()
        device = await _unique_id(api_pool, await _device(api_pool, alice))
        silent = await asyncio.start_server(_hold_open, "127.0.0.1", 0)
        silent_port = silent.sockets[0].getsockname()[1]
        failing = WebhookReceiver(fail_first=None)

        async with (
            SmtpSink() as sink,
            running_api(failing.app) as base,
            notifier(
                kafka_bootstrap,
                api_pool,
                topic,
                sink,
                webhook_workers=1,
                webhook_timeout_s=30.0,
            ) as service,
        ):
            await _rule(
                api_pool,
                alice,
                channels=[
                    {
                        "type": "webhook",
                        "url": f"http://127.0.0.1:{silent_port}/hook",
                        "secret": SECRET,
                    },
                    {"type": "webhook", "url": f"{base}/hook", "secret": SECRET},
                    {"type": "email", "address": "alice@example.com"},
                ],
            )
            service.matcher.forget()
            await _publish(
                kafka_bootstrap,
                topic,
                *(_event(device, "alarm", second) for second in range(5)),
            )
            started = asyncio.get_running_loop().time()
            await sink.wait_for(5, timeout_s=10)
            waited_s = asyncio.get_running_loop().time() - started

            assert service.webhook.delivered == 0
            assert service.webhook.pending > 0

        silent.close()
        assert waited_s < 10
        assert len(sink.received) == 5


async def _hold_open(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    # Reads the request and never answers, like a hung server.
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    writer.close()


class TestOffsets:
    async def test_restart_resumes_after_committed(
        self,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        api_pool: asyncpg.Pool,
        alice: Caller,
    ) -> None:
        """A second instance of the group neither repeats what was handled nor
        misses what was written while no instance ran."""
        topic = kafka_topic(partitions=2)
        group = f"test-notify-{uuid.uuid4().hex[:8]}"
        device = await _unique_id(api_pool, await _device(api_pool, alice))
        await _rule(
            api_pool, alice, channels=[{"type": "email", "address": "a@example.com"}]
        )

        async with SmtpSink() as sink:
            async with notifier(kafka_bootstrap, api_pool, topic, sink, group=group):
                await _publish(kafka_bootstrap, topic, _event(device, "alarm", 1))
                await sink.wait_for(1)
            await _publish(kafka_bootstrap, topic, _event(device, "alarm", 2))
            async with notifier(
                kafka_bootstrap, api_pool, topic, sink, group=group
            ) as again:
                await sink.wait_for(2)
                await _until(lambda: again.events >= 1)
                await asyncio.sleep(0.5)

        times = [
            mail.message.get_content().split(" at ")[1][:20] for mail in sink.received
        ]
        assert times == ["2026-03-01T08:00:01Z", "2026-03-01T08:00:02Z"]
        assert again.events == 1


class TestDatabaseOutage:
    async def test_outage_delays_not_loses(
        self,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        service_data_dir: Path,
    ) -> None:
        """Rules unreadable: the event waits (nothing committed) and is delivered
        once PostgreSQL is back."""
        topic = kafka_topic()
        server = start_on_free_port(
            lambda port: SystemPostgres(
                service_data_dir / "pg", port=port, durable=False
            )
        )
        try:
            await migrate(server.dsn)
            pool = await asyncpg.create_pool(server.dsn, min_size=1, max_size=2)
            owner = await make_caller(pool, "alice")
            device = await _unique_id(pool, await _device(pool, owner))
            await _rule(
                pool, owner, channels=[{"type": "email", "address": "a@example.com"}]
            )
            with capture_logs() as logs:
                async with (
                    SmtpSink() as sink,
                    notifier(kafka_bootstrap, pool, topic, sink) as service,
                ):
                    await asyncio.to_thread(server.stop)
                    await _publish(kafka_bootstrap, topic, _event(device, "alarm", 1))
                    await _until(lambda: _warned(logs, "notify_rules_unavailable"))
                    during = (len(sink.received), service.events)
                    await asyncio.to_thread(server.start)
                    mails = await sink.wait_for(1, timeout_s=60)
            await pool.close()
        finally:
            server.stop()

        assert during == (0, 0)
        assert len(mails) == 1
        assert mails[0].recipients == ["a@example.com"]


def _warned(logs: list[dict[str, Any]], event: str) -> bool:
    return any(entry["event"] == event for entry in logs)


class TestRunNotifier:
    async def test_run_notifier_delivers(
        self,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        api_pool: asyncpg.Pool,
        alice: Caller,
    ) -> None:
        """The entry ``rastro serve`` calls, with its settings, sends e-mail."""
        topic = kafka_topic()
        device = await _unique_id(api_pool, await _device(api_pool, alice))
        await _rule(
            api_pool, alice, channels=[{"type": "email", "address": "a@example.com"}]
        )

        async with SmtpSink() as sink:
            task = asyncio.create_task(
                run_notifier(
                    kafka_bootstrap,
                    api_pool,
                    smtp_host="127.0.0.1",
                    smtp_port=sink.port,
                    smtp_starttls=False,
                    smtp_from="fleet@example.com",
                    topic=topic,
                )
            )
            try:
                # The group starts at the end once it has its partitions: write
                # until one event lands after that.
                async with asyncio.timeout(60):
                    second = 0
                    while not sink.received:
                        second += 1
                        await _publish(
                            kafka_bootstrap, topic, _event(device, "alarm", second)
                        )
                        await asyncio.sleep(0.5)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        assert sink.received[0].sender == "fleet@example.com"
        assert sink.received[0].recipients == ["a@example.com"]

    async def test_run_notifier_bad_sender_refused(
        self, api_pool: asyncpg.Pool
    ) -> None:
        with pytest.raises(ValueError, match="sender must be an e-mail address"):
            await run_notifier(
                "127.0.0.1:9", api_pool, smtp_host="mail.example.com", smtp_from="x"
            )
