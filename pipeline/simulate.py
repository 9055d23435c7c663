"""``rastro simulate``: drive simulated vehicles against a running Rastro.

The vehicles come from :mod:`geo.simulation`; this module is the I/O around it.
Every ``interval`` seconds the fleet is advanced by the wall-clock time that passed
and its fixes go out one of two ways:

- ``http``: batches ``POST``-ed to ``/api/v1/positions`` as a JSON array or a
  protobuf ``FixBatch``, with a bearer token (given, or from logging in);
- ``mqtt``: one QoS 1 message per fix on ``gps/{region}/{uniqueId}``, JSON or a
  protobuf ``Fix``, with a capped window of unacknowledged messages (paho-mqtt
  stalls past 65,535 in flight).

Server trouble (503, refused connections, a broker going away) is counted and
retried with backoff; it never stops the simulator.  Counts are reported every
ten seconds and in one summary at the end: fixes sent, acknowledged (HTTP 2xx or
PUBACK), rejected (HTTP 4xx or a failing PUBACK reason), failed attempts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from geo.simulation import DEFAULT_CENTER, FixColumns, FleetSimulator
from pipeline.logs import configure_logging
from pipeline.model import Fix, FixBatch, format_time_ms

__all__ = [
    "SimulationReport",
    "SimulatorError",
    "encode_json_batch",
    "encode_protobuf_batch",
    "parse_center",
    "run_simulation",
    "run_simulator_command",
]

log = structlog.get_logger()

Transport = Literal["http", "mqtt"]
WireFormat = Literal["json", "protobuf"]

PROGRESS_EVERY_S = 10.0
DRAIN_TIMEOUT_S = 10.0
#: How long the MQTT sender waits at the end for a lost connection to come back
#: (paho retries every second), so that what it holds is still delivered.
RECONNECT_GRACE_S = 3.0
MAX_BACKOFF_S = 5.0
MQTT_WINDOW = 100
"""Default cap of unacknowledged MQTT messages: paho slows down past a few hundred."""
PROTOBUF_TYPE = "application/x-protobuf"
DEFAULT_HTTP_SERVER = "http://127.0.0.1:8080"
DEFAULT_MQTT_SERVER = "mqtt://127.0.0.1:1883"
REQUEST_TIMEOUT_S = 20.0
FAILURES_TO_GIVE_UP = 5
H2_MAX_BODY = 60_000
"""Largest HTTP/2 request body: below the default 65,535-byte stream window."""


class SimulatorError(RuntimeError):
    """The simulator cannot go on: bad credentials, or a server that refuses it."""


@dataclass
class SimulationReport:
    """Counts of one simulator run; rates are per second of ``elapsed_s``.

    ``sent`` counts distinct fixes handed to the transport, ``acknowledged`` those
    the server or broker confirmed, ``rejected`` those it refused for good,
    ``errors`` failed attempts that were retried (a 503, a refused connection) and
    ``dropped`` fixes still unconfirmed when the run ended.
    """

    devices: int = 0
    transport: str = "http"
    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    errors: int = 0
    dropped: int = 0
    registered: int = 0
    elapsed_s: float = 0.0

    @property
    def acknowledged_per_s(self) -> float:
        """Acknowledged fixes per second over the run."""
        return self.acknowledged / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def sent_per_s(self) -> float:
        """Fixes sent per second over the run."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """One line for a person: what was sent, confirmed and refused, and how fast."""
        return (
            f"{self.elapsed_s:.1f} s, {self.devices} vehicles via {self.transport}: "
            f"sent {self.sent} ({self.sent_per_s:.0f}/s), "
            f"acknowledged {self.acknowledged} ({self.acknowledged_per_s:.0f}/s), "
            f"rejected {self.rejected}, errors {self.errors}, dropped {self.dropped}"
        )


@dataclass(frozen=True)
class RateSample:
    """Counts over the last progress interval, for the every-ten-seconds line."""

    report: SimulationReport
    interval_s: float
    sent: int
    acknowledged: int
    rejected: int
    errors: int

    def line(self) -> str:
        """One progress line: totals so far and per-second rates of the interval."""
        per_s = 1.0 / self.interval_s if self.interval_s > 0 else 0.0
        return (
            f"{self.report.elapsed_s:.0f} s: "
            f"sent {self.report.sent} ({self.sent * per_s:.0f}/s), "
            f"acknowledged {self.report.acknowledged} "
            f"({self.acknowledged * per_s:.0f}/s), "
            f"rejected {self.report.rejected} ({self.rejected * per_s:.0f}/s), "
            f"errors {self.report.errors} ({self.errors * per_s:.0f}/s)"
        )


# Encoding -----------------------------------------------------------------


def encode_json_fixes(columns: FixColumns) -> list[dict[str, Any]]:
    """The fixes of one step in the API's JSON form."""
    time_text = format_time_ms(columns.time_ms)
    return [
        {
            "uniqueId": fix.unique_id,
            "time": time_text,
            "latitude": fix.latitude,
            "longitude": fix.longitude,
            "speed": fix.speed,
            "course": fix.course,
            "altitude": fix.altitude,
            "accuracy": fix.accuracy,
            "satellites": fix.satellites,
            "attributes": {
                "ignition": fix.ignition,
                "odometer": fix.odometer,
                "battery": fix.battery,
            },
        }
        for fix in columns.to_fixes()
    ]


def encode_json_batch(columns: FixColumns) -> bytes:
    """A JSON array of the fixes, the body of ``POST /api/v1/positions``."""
    return json.dumps(encode_json_fixes(columns), separators=(",", ":")).encode()


def encode_protobuf_fixes(columns: FixColumns) -> list[Fix]:
    """The fixes of one step as ``rastro.v1.Fix`` messages.

    Attribute values are JSON-encoded, as :mod:`pipeline.model` expects; for
    booleans, integers and finite floats that is ``true``/``false``, ``str`` and
    ``repr``, written directly because ``json.dumps`` per value costs more than the
    rest of the message.
    """
    return [
        Fix(
            device=fix.unique_id,
            fix_time_ms=fix.time_ms,
            latitude=fix.latitude,
            longitude=fix.longitude,
            speed_kmh=fix.speed,
            course=fix.course,
            altitude=fix.altitude,
            accuracy=fix.accuracy,
            satellites=fix.satellites,
            valid=True,
            attributes={
                "ignition": "true" if fix.ignition else "false",
                "odometer": str(fix.odometer),
                "battery": repr(fix.battery),
            },
        )
        for fix in columns.to_fixes()
    ]


def encode_protobuf_batch(columns: FixColumns) -> bytes:
    """A serialized ``FixBatch`` of the fixes."""
    return bytes(FixBatch(fixes=encode_protobuf_fixes(columns)).SerializeToString())


def split_columns(columns: FixColumns, size: int) -> list[FixColumns]:
    """Cut one step's fixes into batches of at most ``size`` vehicles."""
    count = len(columns.unique_ids)
    return [
        _slice_columns(columns, start, min(start + size, count))
        for start in range(0, count, size)
    ]


def _slice_columns(columns: FixColumns, start: int, end: int) -> FixColumns:
    return replace(
        columns,
        unique_ids=columns.unique_ids[start:end],
        latitude=columns.latitude[start:end],
        longitude=columns.longitude[start:end],
        speed=columns.speed[start:end],
        course=columns.course[start:end],
        altitude=columns.altitude[start:end],
        accuracy=columns.accuracy[start:end],
        satellites=columns.satellites[start:end],
        ignition=columns.ignition[start:end],
        odometer=columns.odometer[start:end],
        battery=columns.battery[start:end],
    )


def parse_center(text: str) -> tuple[float, float]:
    """Parse ``LAT,LON`` in degrees, or raise ValueError naming ``--center``."""
    parts = text.split(",")
    try:
        latitude, longitude = (float(part) for part in parts)
    except ValueError as error:
        message = f"--center must be LAT,LON in degrees, got {text!r}"
        raise ValueError(message) from error
    if not (-80.0 <= latitude <= 80.0 and -180.0 <= longitude <= 180.0):
        message = (
            f"--center must be a latitude within ±80 and a longitude, got {text!r}"
        )
        raise ValueError(message)
    return latitude, longitude


def backoff_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling, capped, jittered."""
    base: float = min(0.1 * 2.0 ** min(attempt - 1, 10), MAX_BACKOFF_S)
    return base * random.uniform(0.5, 1.0)


# Senders ------------------------------------------------------------------


class Sender(Protocol):
    """Where fixes go: opened once, fed once per step, drained at the end."""

    async def register(self, unique_ids: Sequence[str]) -> None:
        """Create missing devices, if the transport can."""

    async def send(self, columns: FixColumns) -> None:
        """Hand one step's fixes over; may wait when the server falls behind."""

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for everything sent to be confirmed."""


@dataclass
class HttpOptions:
    """How the HTTP sender talks to the API."""

    server: str
    token: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    wire_format: WireFormat = "json"
    http2: bool = False
    batch_size: int = 500
    concurrency: int = 4


class HttpSender:
    """Posts batches to ``/api/v1/positions`` from a few workers, with retries."""

    def __init__(self, options: HttpOptions, report: SimulationReport) -> None:
        self._options = options
        self._report = report
        self._stopping = asyncio.Event()
        self._queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue(
            maxsize=options.concurrency * 2
        )
        self._token = options.token
        self._client: httpx.AsyncClient | None = None
        self._failures_in_a_row = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HttpSender]:
        """Open the client, log in if needed, and run the posting workers."""
        limits = httpx.Limits(max_connections=self._options.concurrency * 2)
        async with httpx.AsyncClient(
            base_url=self._options.server.rstrip("/"),
            http1=not self._options.http2,
            http2=self._options.http2,
            limits=limits,
            timeout=httpx.Timeout(10.0),
        ) as client:
            self._client = client
            if self._token is None:
                await self._log_in()
            async with asyncio.TaskGroup() as workers:
                tasks = [
                    workers.create_task(self._post_batches())
                    for _ in range(self._options.concurrency)
                ]
                try:
                    yield self
                finally:
                    self._stopping.set()
                    for task in tasks:
                        task.cancel()

    async def register(self, unique_ids: Sequence[str]) -> None:
        """Create each device through ``POST /api/v1/devices``; 409 means it exists."""
        gate = asyncio.Semaphore(16)

        async def create(unique_id: str) -> None:
            async with gate:
                body = {"uniqueId": unique_id, "name": unique_id}
                response = await self._request_with_retry(
                    "POST", "/api/v1/devices", json_body=body
                )
            if response is not None and response.status_code in (200, 201):
                self._report.registered += 1
            elif response is not None and response.status_code != 409:
                log.warning(
                    "device_not_registered",
                    device=unique_id,
                    status=response.status_code,
                )

        async with asyncio.TaskGroup() as group:
            for unique_id in unique_ids:
                group.create_task(create(unique_id))
        log.info("devices_registered", created=self._report.registered)

    async def send(self, columns: FixColumns) -> None:
        """Encode the step in batches and queue them; waits while workers are busy."""
        for batch in split_columns(columns, self._options.batch_size):
            for body, count in self._encode(batch):
                self._report.sent += count
                await self._queue.put((body, count))

    def _encode(self, batch: FixColumns) -> list[tuple[bytes, int]]:
        """Bodies for one batch; under HTTP/2, halved until each fits one window.

        httpcore can stall a request whose body outgrows the peer's flow-control
        window while other streams share the connection
        (https://github.com/encode/httpcore/issues/1082).
        """
        if self._options.wire_format == "protobuf":
            body = encode_protobuf_batch(batch)
        else:
            body = encode_json_batch(batch)
        count = len(batch.unique_ids)
        if not self._options.http2 or len(body) <= H2_MAX_BODY or count == 1:
            return [(body, count)]
        half = (count + 1) // 2
        return [
            *self._encode(_slice_columns(batch, 0, half)),
            *self._encode(_slice_columns(batch, half, count)),
        ]

    async def drain(self, timeout_s: float) -> None:
        """Wait for the queued batches to be posted, at most ``timeout_s``.

        Gives up sooner while the server keeps failing: retrying a server that is
        down would only delay the end of the run.
        """
        joined = asyncio.create_task(self._queue.join())
        deadline = time.monotonic() + timeout_s
        try:
            while not joined.done() and time.monotonic() < deadline:
                if self._failures_in_a_row >= FAILURES_TO_GIVE_UP:
                    log.warning("drain_abandoned", failures=self._failures_in_a_row)
                    return
                await asyncio.wait([joined], timeout=0.1)
        finally:
            joined.cancel()

    async def _post_batches(self) -> None:
        content_type = (
            PROTOBUF_TYPE
            if self._options.wire_format == "protobuf"
            else "application/json"
        )
        while True:
            body, count = await self._queue.get()
            try:
                response = await self._request_with_retry(
                    "POST",
                    "/api/v1/positions",
                    content=body,
                    headers={"Content-Type": content_type},
                )
                self._count_positions(response, count)
            finally:
                self._queue.task_done()

    def _count_positions(self, response: httpx.Response | None, count: int) -> None:
        """Count a batch's answer.

        2xx, and 400 or 429 carrying an ingest result (``accepted`` plus a
        ``rejected`` list), split the batch; any other answer rejects all of it.
        """
        if response is None:
            return
        result = _ingest_result(response, count)
        if response.is_success or result is not None:
            accepted, rejected = result or (count, 0)
            self._report.acknowledged += accepted
            self._report.rejected += rejected
            if rejected:
                log.warning(
                    "positions_partly_rejected",
                    status=response.status_code,
                    accepted=accepted,
                    rejected=rejected,
                )
            return
        self._report.rejected += count
        log.warning(
            "positions_rejected",
            status=response.status_code,
            fixes=count,
            reason=response.text[:200],
        )

    async def _request_with_retry(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        """Send until the server answers other than 429/5xx; None if stopped first.

        A 401 with credentials at hand logs in again once and retries.
        """
        assert self._client is not None
        attempt = 0
        relogged = False
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    response = await self._client.request(
                        method,
                        path,
                        json=json_body,
                        content=content,
                        headers={**(headers or {}), **self._auth_header()},
                    )
            except (httpx.TransportError, TimeoutError) as error:
                self._note_failure(path, attempt, reason=type(error).__name__)
                delay = backoff_delay(attempt)
            else:
                if response.status_code == 401 and self._can_log_in() and not relogged:
                    relogged = True
                    await self._log_in()
                    continue
                if not _should_retry(response):
                    self._failures_in_a_row = 0
                    return response
                self._note_failure(path, attempt, reason=str(response.status_code))
                delay = max(backoff_delay(attempt), _retry_after_s(response))
            if self._stopping.is_set():
                return None
            await asyncio.sleep(delay)

    def _note_failure(self, path: str, attempt: int, *, reason: str) -> None:
        self._report.errors += 1
        self._failures_in_a_row += 1
        if attempt == 1 or attempt % 10 == 0:
            log.warning("request_failed", path=path, attempt=attempt, reason=reason)

    def _auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _can_log_in(self) -> bool:
        return bool(self._options.user and self._options.password)

    async def _log_in(self) -> None:
        """Trade user and password for a token; no credentials means no token."""
        if not self._can_log_in():
            return
        assert self._client is not None
        self._token = None
        body = {"user": self._options.user, "password": self._options.password}
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._client.post("/api/v1/session", json=body)
            except httpx.TransportError as error:
                self._note_failure(
                    "/api/v1/session", attempt, reason=type(error).__name__
                )
            else:
                if response.status_code < 500 and response.status_code != 429:
                    self._token = _token_from(response, self._options.user)
                    log.info("logged_in", user=self._options.user)
                    return
                self._note_failure(
                    "/api/v1/session", attempt, reason=str(response.status_code)
                )
            await asyncio.sleep(backoff_delay(attempt))


def _token_from(response: httpx.Response, user: str | None) -> str:
    if not response.is_success:
        message = f"logging in as {user!r} failed: HTTP {response.status_code}"
        raise SimulatorError(message)
    try:
        token = response.json()["token"]
    except (ValueError, KeyError, TypeError) as error:
        message = "the session response has no token"
        raise SimulatorError(message) from error
    if not isinstance(token, str) or not token:
        message = "the session response has no token"
        raise SimulatorError(message)
    return token


def _ingest_result(response: httpx.Response, count: int) -> tuple[int, int] | None:
    """``(accepted, rejected)`` from an ingest result in the body.

    The API answers ``{"accepted": 498, "rejected": [{"index", "reason"}, ...]}``;
    None when the body says nothing usable about the batch.
    """
    try:
        document = response.json()
    except ValueError:
        return None
    if not isinstance(document, dict) or "accepted" not in document:
        return None
    accepted = document["accepted"]
    rejected_field = document.get("rejected", [])
    rejected = (
        len(rejected_field) if isinstance(rejected_field, list) else rejected_field
    )
    if not isinstance(accepted, int) or not isinstance(rejected, int):
        return None
    if not (0 <= accepted <= count and 0 <= rejected <= count - accepted):
        return None
    return accepted, count - accepted


def _should_retry(response: httpx.Response) -> bool:
    """5xx, and 429 without an ingest result, mean "try again later"."""
    if response.status_code >= 500:
        return True
    return response.status_code == 429 and _ingest_result(response, 10**9) is None


def _retry_after_s(response: httpx.Response) -> float:
    """The server's ``Retry-After`` in seconds (0 when absent), at most 30."""
    try:
        return min(float(response.headers.get("retry-after", "0")), 30.0)
    except ValueError:
        return 0.0


@dataclass
class MqttOptions:
    """How the MQTT sender talks to the broker."""

    server: str
    region: str = "madrid"
    wire_format: WireFormat = "json"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    window: int = MQTT_WINDOW


class MqttSender:
    """Publishes each fix with QoS 1 through paho-mqtt, a capped window in flight."""

    def __init__(self, options: MqttOptions, report: SimulationReport) -> None:
        if not 1 <= options.window <= 60_000:
            message = f"window must be between 1 and 60000, got {options.window!r}"
            raise ValueError(message)
        if not options.region or any(c in options.region for c in "/+#"):
            message = (
                f"region must be one topic level without / + #, got {options.region!r}"
            )
            raise ValueError(message)
        self._options = options
        self._report = report
        self._client: mqtt.Client | None = None
        self._host, self._port = parse_mqtt_url(options.server)
        self._window = asyncio.Semaphore(options.window)
        self._in_flight = 0
        self._connected = False
        # The event loop's view of ``_connected``, for waiting on it.
        self._link_up = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # PUBACKs arrive on paho's thread; they are queued and collected on the
        # event loop in bunches, one wake-up per bunch instead of one per message.
        self._acks: collections.deque[bool] = collections.deque()
        self._collect_scheduled = False
        self._loop = asyncio.get_running_loop()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MqttSender]:
        """Connect in paho's network thread (it reconnects by itself), then serve."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rastro-simulator-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        if self._options.user:
            client.username_pw_set(self._options.user, self._options.password)
        client.max_inflight_messages_set(min(self._options.window, 65_000))
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=int(MAX_BACKOFF_S))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self._host, self._port, keepalive=30)
        client.loop_start()
        self._client = client
        try:
            yield self
        finally:
            client.disconnect()
            client.loop_stop()

    async def register(self, unique_ids: Sequence[str]) -> None:
        """MQTT devices need no registration here; the broker takes any topic."""
        log.info("register_skipped", transport="mqtt", devices=len(unique_ids))

    async def send(self, columns: FixColumns) -> None:
        """Publish one message per fix, waiting whenever the window is full."""
        topics = [f"gps/{self._options.region}/{uid}" for uid in columns.unique_ids]
        payloads: Sequence[bytes]
        if self._options.wire_format == "protobuf":
            payloads = [
                fix.SerializeToString() for fix in encode_protobuf_fixes(columns)
            ]
        else:
            payloads = [
                json.dumps(document, separators=(",", ":")).encode()
                for document in encode_json_fixes(columns)
            ]
        for topic, payload in zip(topics, payloads, strict=True):
            await self._window.acquire()
            self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes) -> None:
        self._idle.clear()
        self._in_flight += 1
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1)
        self._report.sent += 1
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # Not queued at all: count it and free its place in the window.
            self._report.errors += 1
            self._report.rejected += 1
            self._settle(1)

    async def drain(self, timeout_s: float) -> None:
        """Wait for PUBACKs of everything in flight, at most ``timeout_s``.

        paho keeps unacknowledged QoS 1 messages through a dropped connection and
        sends them again once it reconnects, so a broker that restarts (or comes up
        late) is waited for, :data:`RECONNECT_GRACE_S` at most; with no broker at
        all nothing will be acknowledged and the wait ends there.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                if not await self._connection(min(RECONNECT_GRACE_S, timeout_s)):
                    return
                await self._idle.wait()

    async def _connection(self, grace_s: float) -> bool:
        """Whether paho is connected, or reconnects within ``grace_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._link_up.wait()
        return self._link_up.is_set()

    @property
    def in_flight(self) -> int:
        """Messages published and not yet acknowledged."""
        return self._in_flight

    # paho's network thread calls these.

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            self._connected = False
            self._loop.call_soon_threadsafe(self._count_error)
            log.warning("mqtt_connect_failed", reason=str(reason))
        else:
            self._connected = True
            self._loop.call_soon_threadsafe(self._link_up.set)
            log.info("mqtt_connected", host=self._host, port=self._port)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._connected = False
        self._loop.call_soon_threadsafe(self._count_error)
        log.warning("mqtt_connect_failed", host=self._host, port=self._port)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected = False
        self._loop.call_soon_threadsafe(self._link_up.clear)
        if getattr(reason, "is_failure", False):
            self._loop.call_soon_threadsafe(self._count_error)
            log.warning("mqtt_disconnected", reason=str(reason))

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._acks.append(bool(getattr(reason, "is_failure", False)))
        if not self._collect_scheduled:
            self._collect_scheduled = True
            self._loop.call_soon_threadsafe(self._collect_acks)

    # The event loop runs these.

    def _count_error(self) -> None:
        self._report.errors += 1

    def _collect_acks(self) -> None:
        self._collect_scheduled = False
        settled = 0
        while self._acks:
            if self._acks.popleft():
                self._report.rejected += 1
            else:
                self._report.acknowledged += 1
            settled += 1
        self._settle(settled)

    def _settle(self, count: int) -> None:
        self._in_flight -= count
        for _ in range(count):
            self._window.release()
        if self._in_flight <= 0:
            self._idle.set()


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """Host and port of ``mqtt://HOST[:PORT]`` (1883 by default)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        message = f"an MQTT server must look like mqtt://HOST:PORT, got {url!r}"
        raise ValueError(message)
    return parts.hostname, parts.port or 1883


# The run ------------------------------------------------------------------


async def run_simulation(
    server: str,
    *,
    devices: int = 100,
    via: Transport = "http",
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    center: tuple[float, float] = DEFAULT_CENTER,
    interval_s: float = 1.0,
    duration_s: float | None = None,
    register: bool = False,
    wire_format: WireFormat = "json",
    region: str = "madrid",
    seed: int = 0,
    http2: bool = False,
    batch_size: int = 500,
    mqtt_window: int = MQTT_WINDOW,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[RateSample], None] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> SimulationReport:
    """Drive ``devices`` simulated vehicles against ``server`` until told to stop.

    Runs for ``duration_s`` seconds (``None``: until ``stop`` is set), one step
    every ``interval_s`` seconds, calling ``on_progress`` every
    ``progress_every_s`` seconds.  Server errors are retried, never raised; only a
    refused login (:class:`SimulatorError`) ends the run early.
    """
    _check_run_arguments(devices, interval_s, duration_s, batch_size, via, wire_format)
    report = SimulationReport(devices=devices, transport=via)
    stop = stop or asyncio.Event()
    fleet = FleetSimulator(
        devices, seed=seed, center=center, start_time_ms=int(time.time() * 1000)
    )
    opened = _open_sender(
        via,
        report,
        server=server,
        token=token,
        user=user,
        password=password,
        wire_format=wire_format,
        region=region,
        http2=http2,
        batch_size=batch_size,
        mqtt_window=mqtt_window,
    )
    log.info("simulation_started", devices=devices, via=via, server=server)
    started = time.monotonic()
    async with opened as sender:
        if register:
            await sender.register(fleet.unique_ids)
        async with asyncio.TaskGroup() as group:
            reporter = group.create_task(
                _report_progress(report, started, progress_every_s, on_progress)
            )
            await _drive(fleet, sender, report, stop, started, interval_s, duration_s)
            await sender.drain(DRAIN_TIMEOUT_S)
            reporter.cancel()
    report.elapsed_s = time.monotonic() - started
    report.dropped = max(report.sent - report.acknowledged - report.rejected, 0)
    log.info("simulation_finished", **_report_fields(report))
    # A copy: acknowledgements still in the event loop's queue must not change it.
    return replace(report)


def _check_run_arguments(
    devices: int,
    interval_s: float,
    duration_s: float | None,
    batch_size: int,
    via: str,
    wire_format: str,
) -> None:
    if devices < 1:
        message = f"devices must be at least 1, got {devices!r}"
        raise ValueError(message)
    if not math.isfinite(interval_s) or not 0.01 <= interval_s <= 3600:
        message = f"interval must be between 0.01 and 3600 seconds, got {interval_s!r}"
        raise ValueError(message)
    if duration_s is not None and not duration_s > 0:
        message = f"duration must be positive seconds, got {duration_s!r}"
        raise ValueError(message)
    if batch_size < 1:
        message = f"batch_size must be at least 1, got {batch_size!r}"
        raise ValueError(message)
    if via not in ("http", "mqtt"):
        message = f"via must be 'http' or 'mqtt', got {via!r}"
        raise ValueError(message)
    if wire_format not in ("json", "protobuf"):
        message = f"format must be 'json' or 'protobuf', got {wire_format!r}"
        raise ValueError(message)


def _open_sender(
    via: Transport,
    report: SimulationReport,
    *,
    server: str,
    token: str | None,
    user: str | None,
    password: str | None,
    wire_format: WireFormat,
    region: str,
    http2: bool,
    batch_size: int,
    mqtt_window: int,
) -> contextlib.AbstractAsyncContextManager[HttpSender | MqttSender]:
    if via == "mqtt":
        options = MqttOptions(
            server=server,
            region=region,
            wire_format=wire_format,
            user=user,
            password=password,
            window=mqtt_window,
        )
        return MqttSender(options, report).running()
    if not server.startswith(("http://", "https://")):
        message = f"an HTTP server must look like http://HOST:PORT, got {server!r}"
        raise ValueError(message)
    http = HttpOptions(
        server=server,
        token=token,
        user=user,
        password=password,
        wire_format=wire_format,
        http2=http2,
        batch_size=batch_size,
    )
    return HttpSender(http, report).running()


async def _drive(
    fleet: FleetSimulator,
    sender: Sender,
    report: SimulationReport,
    stop: asyncio.Event,
    started: float,
    interval_s: float,
    duration_s: float | None,
) -> None:
    """Step the fleet by the time that really passed, once per interval."""
    last = time.monotonic() - interval_s
    next_step = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if duration_s is not None and now - started >= duration_s:
            break
        columns = fleet.advance_columns(min(max(now - last, 1e-3), 60.0))
        last = now
        await sender.send(columns)
        report.elapsed_s = time.monotonic() - started

        next_step = max(next_step + interval_s, time.monotonic())
        if duration_s is not None:
            next_step = min(next_step, started + duration_s)
        await _wait_until(stop, next_step)


async def _wait_until(stop: asyncio.Event, deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()


async def _report_progress(
    report: SimulationReport,
    started: float,
    every_s: float,
    on_progress: Callable[[RateSample], None] | None,
) -> None:
    previous = replace(report)
    previous_time = started
    while True:
        await asyncio.sleep(every_s)
        now = time.monotonic()
        report.elapsed_s = now - started
        sample = RateSample(
            report=replace(report),
            interval_s=now - previous_time,
            sent=report.sent - previous.sent,
            acknowledged=report.acknowledged - previous.acknowledged,
            rejected=report.rejected - previous.rejected,
            errors=report.errors - previous.errors,
        )
        previous, previous_time = replace(report), now
        log.info("simulation_progress", **_report_fields(sample.report))
        if on_progress is not None:
            on_progress(sample)


def _report_fields(report: SimulationReport) -> dict[str, Any]:
    return {
        "sent": report.sent,
        "acknowledged": report.acknowledged,
        "rejected": report.rejected,
        "errors": report.errors,
        "dropped": report.dropped,
        "elapsed_s": round(report.elapsed_s, 2),
        "acknowledged_per_s": round(report.acknowledged_per_s, 1),
    }


# The command --------------------------------------------------------------


def run_simulator_command(arguments: argparse.Namespace) -> int:
    """Run ``rastro simulate`` from parsed arguments; the exit code.

    0 when it ran (even through server errors), 1 when nothing sent was ever
    acknowledged or the login was refused, 2 for bad arguments.
    """
    configure_logging(os.environ.get("RASTRO_LOG_LEVEL", "WARNING"))
    try:
        center = parse_center(arguments.center)
    except ValueError as error:
        _say(f"rastro simulate: {error}", stream=sys.stderr)
        return 2
    try:
        report = asyncio.run(_run_until_interrupted(arguments, center))
    except ValueError as error:
        _say(f"rastro simulate: {error}", stream=sys.stderr)
        return 2
    except SimulatorError as error:
        _say(f"rastro simulate: {error}", stream=sys.stderr)
        return 1
    _say(f"rastro simulate: done: {report.summary()}")
    return 1 if report.sent and not report.acknowledged else 0


async def _run_until_interrupted(
    arguments: argparse.Namespace, center: tuple[float, float]
) -> SimulationReport:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await _run_from_arguments(arguments, center, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _run_from_arguments(
    arguments: argparse.Namespace, center: tuple[float, float], stop: asyncio.Event
) -> Awaitable[SimulationReport]:
    def option(name: str, default: Any = None) -> Any:
        return getattr(arguments, name, default)

    server = arguments.server
    if arguments.via == "mqtt" and server == DEFAULT_HTTP_SERVER:
        server = DEFAULT_MQTT_SERVER
    return run_simulation(
        server,
        devices=arguments.devices,
        via=arguments.via,
        token=option("token") or os.environ.get("RASTRO_TOKEN") or None,
        user=option("user"),
        password=option("password") or os.environ.get("RASTRO_PASSWORD") or None,
        center=center,
        interval_s=arguments.interval,
        duration_s=arguments.duration,
        register=arguments.register,
        wire_format=option("format", "json"),
        region=option("region", "madrid"),
        seed=option("seed", 0),
        http2=option("http2", False),
        batch_size=option("batch_size", 500),
        mqtt_window=option("mqtt_window", MQTT_WINDOW),
        stop=stop,
        on_progress=lambda sample: _say(f"rastro simulate: {sample.line()}"),
    )


def _say(line: str, *, stream: Any = None) -> None:
    """A line for the person at the terminal: the CLI's progress and summary."""
    print(line, file=stream or sys.stdout, flush=True)
