"""Webhooks against a real HTTP server (Starlette on Hypercorn): signatures,
retries with back-off, what happens when the receiver never answers well, and
which addresses a webhook may reach."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pipeline.config import parse_networks
from pipeline.notify.channels import ChannelQueue, Delivery, RetryPolicy
from pipeline.notify.rules import WebhookChannel
from pipeline.notify.webhook import NOT_PUBLIC, WebhookSender
from pipeline.ports import free_port
from tests.fixtures.api import running_api
from tests.fixtures.notify import WebhookCall, WebhookReceiver, self_signed

#: The receivers here listen on loopback, which webhooks may not reach by default.
LOOPBACK = parse_networks("127.0.0.0/8, ::1/128")

SECRET = "whsec-0123456789abcdef-notify"
EVENT = {
    "uniqueId": "356307042441013",
    "type": "geofenceEnter",
    "time": "2026-03-01T08:00:00Z",
    "latitude": 48.137,
    "longitude": 11.575,
    "attributes": {"geofence": 3, "name": "Depot"},
}


def _delivery(url: str) -> Delivery:
    return Delivery(
        rule_id=7,
        rule_name="Depot",
        channel=WebhookChannel(url, SECRET),
        device_name="Van 12",
        event=EVENT,
        key="4f1c0de5d9e34a4f8f0c3c3b4b0a1d2e",
    )


def _verified(call: WebhookCall) -> dict[str, object]:
    """The body of a call whose signature checks out under the shared secret."""
    expected = hmac.new(SECRET.encode(), call.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(call.headers["x-rastro-signature"], f"sha256={expected}")
    document: dict[str, object] = json.loads(call.body)
    return document


@contextlib.asynccontextmanager
async def serving(receiver: WebhookReceiver) -> AsyncIterator[str]:
    async with running_api(receiver.app) as base:
        yield f"{base}/hook"


@contextlib.asynccontextmanager
async def channel(policy: RetryPolicy) -> AsyncIterator[ChannelQueue]:
    sender = WebhookSender(timeout_s=5.0, allowed_networks=LOOPBACK)
    queue = ChannelQueue("webhook", sender, retry=policy)
    task = asyncio.create_task(queue.run())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sender.aclose()


async def _until_settled(queue: ChannelQueue, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while queue.delivered + queue.failed == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.mark.integration
class TestWebhookPost:
    async def test_post_signed_json(self) -> None:
        receiver = WebhookReceiver()
        sender = WebhookSender(allowed_networks=LOOPBACK)

        async with serving(receiver) as url:
            outcome = await sender.post(_delivery(url))
        await sender.aclose()

        call = receiver.calls[0]
        body = _verified(call)
        assert outcome is None
        assert call.headers["content-type"] == "application/json"
        assert call.headers["x-rastro-delivery"] == body["id"] == _delivery(url).key
        assert int(call.headers["x-rastro-timestamp"]) == body["timestamp"]
        assert abs(int(call.headers["x-rastro-timestamp"]) - time.time()) < 30
        assert body["rule"] == {"id": 7, "name": "Depot"}
        assert body["device"] == {"uniqueId": "356307042441013", "name": "Van 12"}
        assert body["event"] == EVENT

    async def test_tampered_body_fails_verification(self) -> None:
        """The signature covers the body: changing one byte breaks it."""
        receiver = WebhookReceiver()
        sender = WebhookSender(allowed_networks=LOOPBACK)

        async with serving(receiver) as url:
            await sender.post(_delivery(url))
        await sender.aclose()
        call = receiver.calls[0]
        tampered = WebhookCall(call.headers, call.body.replace(b"Depot", b"Dep0t"), 0)

        with pytest.raises(AssertionError):
            _verified(tampered)

    @pytest.mark.parametrize(
        ("status", "retry"), [(500, True), (429, True), (400, False), (302, False)]
    )
    async def test_post_failure_kind(self, status: int, retry: bool) -> None:
        receiver = WebhookReceiver(fail_first=None, status=status)
        sender = WebhookSender(allowed_networks=LOOPBACK)

        async with serving(receiver) as url:
            failure = await sender.post(_delivery(url))
        await sender.aclose()

        assert failure is not None
        assert (failure.reason, failure.retry) == (f"HTTP {status}", retry)

    async def test_post_connection_refused_retried(self) -> None:
        sender = WebhookSender(timeout_s=2.0, allowed_networks=LOOPBACK)

        failure = await sender.post(_delivery(f"http://127.0.0.1:{free_port()}/hook"))
        await sender.aclose()

        assert failure is not None
        assert (failure.reason, failure.retry) == ("ConnectError", True)


@pytest.mark.integration
class TestWebhookRetries:
    async def test_fails_first_then_delivered(self) -> None:
        """Two 503s, then success: three signed calls, further and further apart."""
        receiver = WebhookReceiver(fail_first=2)
        policy = RetryPolicy(attempts=5, base_s=0.2, max_s=5.0, jitter=0.5)

        async with serving(receiver) as url, channel(policy) as queue:
            queue.offer(_delivery(url))
            await _until_settled(queue)

        calls = receiver.calls
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(calls)]
        assert (queue.delivered, queue.failed, len(calls)) == (1, 0, 3)
        # Back-off: at least half of 0.2 s, then of 0.4 s (jitter takes up to half).
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2
        assert {_verified(call)["id"] for call in calls} == {_delivery(url).key}

    async def test_always_failing_dropped_with_one_error(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        receiver = WebhookReceiver(fail_first=None)
        policy = RetryPolicy(attempts=3, base_s=0.05, max_s=1.0, jitter=0.0)
        caplog.set_level(logging.DEBUG)

        with capture_logs() as logs:
            async with serving(receiver) as url, channel(policy) as queue:
                queue.offer(_delivery(url))
                await _until_settled(queue)

        errors = [entry for entry in logs if entry["log_level"] == "error"]
        assert len(receiver.calls) == 3
        assert errors == [
            {
                "event": "notification_dropped",
                "log_level": "error",
                "channel": "webhook",
                "rule": 7,
                "rule_name": "Depot",
                "destination": "127.0.0.1",
                "attempts": 3,
                "reason": "HTTP 503",
            }
        ]
        assert SECRET not in repr(logs)
        assert SECRET not in caplog.text


@dataclass
class TlsReceiver:
    """An HTTPS server on 127.0.0.1 that answers 204 and keeps what it saw."""

    context: ssl.SSLContext
    server_names: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        self.context.sni_callback = self._remember_name
        server = await asyncio.start_server(
            self._answer, "127.0.0.1", 0, ssl=self.context
        )
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()

    def _remember_name(
        self, _: ssl.SSLObject, name: str | None, __: ssl.SSLContext
    ) -> None:
        self.server_names.append(name)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        fields = dict(
            line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line
        )
        fields = {name.lower(): value for name, value in fields.items()}
        await reader.readexactly(int(fields.get("content-length", "0")))
        self.hosts.append(fields["host"])
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.mark.integration
class TestWebhookAddresses:
    async def test_loopback_refused_unless_allowed(self) -> None:
        receiver = WebhookReceiver()
        strict = WebhookSender()

        async with serving(receiver) as url:
            refused = await strict.post(_delivery(url))
        await strict.aclose()

        assert refused is not None
        assert (refused.reason, refused.retry) == (NOT_PUBLIC, False)
        assert receiver.calls == []

    async def test_name_checked_by_what_it_resolves_to(self) -> None:
        """``localhost`` is refused as 127.0.0.1 would be; allowed, the request
        goes to the checked address and still says ``Host: localhost``."""
        receiver = WebhookReceiver()
        strict, allowing = WebhookSender(), WebhookSender(allowed_networks=LOOPBACK)

        async with serving(receiver) as url:
            by_name = url.replace("127.0.0.1", "localhost")
            refused = await strict.post(_delivery(by_name))
            delivered = await allowing.post(_delivery(by_name))
        await strict.aclose()
        await allowing.aclose()

        assert refused is not None and refused.reason == NOT_PUBLIC
        assert delivered is None
        port = by_name.split(":")[2].split("/")[0]
        assert [call.headers["host"] for call in receiver.calls] == [
            f"localhost:{port}"
        ]

    @pytest.mark.parametrize(
        "url",
        [
            "http://10.20.30.40/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:8080/hook",
            "http://[::ffff:127.0.0.1]:8080/hook",
            "http://0.0.0.0:8080/hook",
            "http://100.64.0.1/hook",
        ],
    )
    async def test_private_addresses_refused_without_connecting(self, url: str) -> None:
        sender = WebhookSender(timeout_s=2.0)

        started = time.monotonic()
        failure = await sender.post(_delivery(url))
        await sender.aclose()

        assert failure is not None
        assert (failure.reason, failure.retry) == (NOT_PUBLIC, False)
        assert time.monotonic() - started < 1.0

    async def test_unresolvable_name_retried(self) -> None:
        sender = WebhookSender(timeout_s=5.0)

        failure = await sender.post(_delivery("https://no-such-host.invalid/hook"))
        await sender.aclose()

        assert failure is not None
        assert failure.retry

    async def test_tls_checks_the_name_not_the_address(self, tmp_path: Path) -> None:
        """Over HTTPS the connection goes to the checked address, while SNI and
        the certificate check use the URL's name: a certificate for
        ``localhost`` is accepted, and the server is told ``localhost``."""
        server_context, client_context = self_signed(tmp_path)
        receiver = TlsReceiver(server_context)
        sender = WebhookSender(
            allowed_networks=LOOPBACK, verify=client_context, timeout_s=5.0
        )

        async with receiver.serving() as port:
            outcome = await sender.post(_delivery(f"https://localhost:{port}/hook"))
        await sender.aclose()

        assert outcome is None
        assert receiver.server_names == ["localhost"]
        assert receiver.hosts == [f"localhost:{port}"]
