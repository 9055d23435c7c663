"""E-mail against a real SMTP server (the sink in tests.fixtures.notify):
the message, STARTTLS and AUTH, and which failures are tried again."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pipeline.notify.channels import ChannelQueue, Delivery, Failure, RetryPolicy
from pipeline.notify.mail import SmtpMailer, SmtpSettings
from pipeline.notify.rules import EmailChannel
from pipeline.ports import free_port
from tests.fixtures.notify import SmtpSink, self_signed

PASSWORD = "smtp-password-never-logged"
EVENT = {
    "uniqueId": "356307042441013",
    "type": "geofenceEnter",
    "time": "2026-03-01T08:00:00Z",
    "latitude": 48.137,
    "longitude": 11.575,
    "attributes": {"geofence": 3, "name": "Depot"},
}


def _delivery(address: str = "ops@example.com", device: str = "Van 12") -> Delivery:
    return Delivery(
        rule_id=7,
        rule_name="Depot arrivals",
        channel=EmailChannel(address),
        device_name=device,
        event=EVENT,
        key="0123456789abcdef0123456789abcdef",
    )


def _plain(sink: SmtpSink, **changes: object) -> SmtpSettings:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": sink.port,
        "starttls": False,
        "sender": "rastro@fleet.example.com",
        "timeout_s": 5.0,
    }
    settings.update(changes)
    return SmtpSettings(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def certificates(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ssl.SSLContext, ...]:
    return self_signed(tmp_path_factory.mktemp("tls"))


class TestMessage:
    async def test_mail_carries_event(self) -> None:
        async with SmtpSink() as sink:
            outcomes = await SmtpMailer(_plain(sink))([_delivery()])

        received = sink.received[0]
        message = received.message
        assert outcomes == [None]
        assert received.sender == "rastro@fleet.example.com"
        assert received.recipients == ["ops@example.com"]
        assert message["To"] == "ops@example.com"
        assert message["Subject"] == "Rastro: geofenceEnter - Van 12"
        assert message["X-Rastro-Delivery"] == _delivery().key
        assert message["Message-ID"].endswith("@fleet.example.com>")
        text = message.get_content()
        assert text.startswith(
            "Van 12 (356307042441013): geofenceEnter at 2026-03-01T08:00:00Z\n"
            "Position: 48.137000, 11.575000\n"
        )
        assert "geofence: 3\nname: Depot\n" in text
        assert 'notification rule "Depot arrivals"' in text

    async def test_device_name_cannot_add_headers(self) -> None:
        async with SmtpSink() as sink:
            await SmtpMailer(_plain(sink))([_delivery(device="Van\r\nBcc: x@evil.org")])

        message = sink.received[0].message
        assert message["Subject"] == "Rastro: geofenceEnter - Van Bcc: x@evil.org"
        assert message["Bcc"] is None
        assert sink.received[0].recipients == ["ops@example.com"]

    async def test_batch_uses_one_session(self) -> None:
        batch = [_delivery(f"user{n}@example.com") for n in range(3)]

        async with SmtpSink() as sink:
            outcomes = await SmtpMailer(_plain(sink))(batch)

        assert outcomes == [None, None, None]
        assert sink.connections == 1
        assert [mail.recipients[0] for mail in sink.received] == [
            "user0@example.com",
            "user1@example.com",
            "user2@example.com",
        ]


class TestSession:
    async def test_starttls_and_login(
        self, certificates: tuple[ssl.SSLContext, ssl.SSLContext]
    ) -> None:
        server, client = certificates
        async with SmtpSink(tls=server, user="rastro", password=PASSWORD) as sink:
            settings = _plain(
                sink, starttls=True, tls=client, user="rastro", password=PASSWORD
            )
            with capture_logs() as logs:
                outcomes = await SmtpMailer(settings)([_delivery()])

        assert outcomes == [None]
        assert (sink.received[0].tls, sink.received[0].user) == (True, "rastro")
        assert PASSWORD not in repr(settings)
        assert PASSWORD not in repr(logs)

    async def test_implicit_tls_and_login(
        self, certificates: tuple[ssl.SSLContext, ssl.SSLContext]
    ) -> None:
        """SMTPS: TLS from the first byte, so no STARTTLS is asked for."""
        server, client = certificates
        async with SmtpSink(
            implicit_tls=server, user="rastro", password=PASSWORD
        ) as sink:
            settings = _plain(
                sink,
                implicit_tls=True,
                starttls=True,
                tls=client,
                user="rastro",
                password=PASSWORD,
            )
            outcomes = await SmtpMailer(settings)([_delivery()])

        assert outcomes == [None]
        assert (sink.received[0].tls, sink.received[0].user) == (True, "rastro")

    async def test_implicit_tls_untrusted_certificate_is_final(
        self, certificates: tuple[ssl.SSLContext, ssl.SSLContext]
    ) -> None:
        server, _ = certificates
        async with SmtpSink(implicit_tls=server) as sink:
            settings = _plain(sink, implicit_tls=True)
            outcomes = await SmtpMailer(settings)([_delivery()])

        assert outcomes == [Failure("server certificate not trusted", retry=False)]
        assert sink.received == []

    async def test_starttls_missing_is_final(self) -> None:
        async with SmtpSink() as sink:
            outcomes = await SmtpMailer(_plain(sink, starttls=True))([_delivery()])

        failure = outcomes[0]
        assert failure is not None and failure.retry is False
        assert failure.reason.startswith("server does not support it: STARTTLS")
        assert sink.received == []

    async def test_untrusted_certificate_is_final(
        self, certificates: tuple[ssl.SSLContext, ssl.SSLContext]
    ) -> None:
        server, _ = certificates
        async with SmtpSink(tls=server) as sink:
            # The default context trusts the system's authorities, not this one.
            outcomes = await SmtpMailer(_plain(sink, starttls=True))([_delivery()])

        assert outcomes[0] is not None
        assert outcomes[0].reason == "server certificate not trusted"
        assert outcomes[0].retry is False

    async def test_wrong_password_is_final(self) -> None:
        async with SmtpSink(user="rastro", password=PASSWORD) as sink:
            settings = _plain(sink, user="rastro", password="wrong-password")
            outcomes = await SmtpMailer(settings)([_delivery()])

        assert outcomes[0] is not None
        assert outcomes[0].reason == "SMTP 535 (SMTPAuthenticationError)"
        assert outcomes[0].retry is False
        assert sink.received == []

    async def test_refused_recipient_spares_others(self) -> None:
        batch = [_delivery("gone@example.com"), _delivery("ops@example.com")]

        async with SmtpSink(refuse={"gone@example.com"}) as sink:
            outcomes = await SmtpMailer(_plain(sink))(batch)

        assert outcomes[0] is not None
        assert (outcomes[0].reason, outcomes[0].retry) == (
            "recipient refused, SMTP [550]",
            False,
        )
        assert outcomes[1] is None
        assert [mail.recipients for mail in sink.received] == [["ops@example.com"]]

    async def test_server_down_is_retried(self) -> None:
        settings = SmtpSettings("127.0.0.1", free_port(), starttls=False, timeout_s=2)

        outcomes = await SmtpMailer(settings)([_delivery(), _delivery()])

        assert [o.retry if o else None for o in outcomes] == [True, True]
        assert outcomes[0] is not None
        assert outcomes[0].reason == "ConnectionRefusedError"

    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"host": ""}, "host must name the SMTP server"),
            ({"host": "h", "port": 0}, "port must be from 1 to 65535, got 0"),
            ({"host": "h", "sender": "rastro"}, "sender must be an e-mail address"),
        ],
    )
    def test_settings_refused(self, settings: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            SmtpSettings(**settings)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def channel(
    settings: SmtpSettings, policy: RetryPolicy
) -> AsyncIterator[ChannelQueue]:
    queue = ChannelQueue("email", SmtpMailer(settings), batch=10, retry=policy)
    task = asyncio.create_task(queue.run())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TestMailRetries:
    async def test_busy_server_tried_again(self) -> None:
        """421 on the first connection: the mail goes through on the next one."""
        policy = RetryPolicy(attempts=3, base_s=0.1, jitter=0.0)

        async with SmtpSink(turn_away=1) as sink:
            async with channel(_plain(sink), policy) as queue:
                queue.offer(_delivery())
                async with asyncio.timeout(10):
                    while not queue.delivered:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)

        assert sink.connections == 2
        assert len(sink.received) == 1
        assert queue.retried == 1


def test_self_signed_files(tmp_path: Path) -> None:
    """The helper's certificate is what the TLS tests above rely on."""
    server, client = self_signed(tmp_path)

    assert (tmp_path / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert server is not client
