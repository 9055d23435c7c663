"""MQTT ingest: devices publish to ``gps/{region}/{device}``; Kafka gets the fixes.

:class:`MqttBridge` subscribes at QoS 1 and acknowledges a message (PUBACK) only
after Kafka acknowledged its fixes (paho's ``manual_ack``).  While Kafka is down
the bridge keeps the messages unacknowledged and retries the publish with a growing
pause; if the bridge stops meanwhile, the broker still holds them in the bridge's
session and delivers them again when a bridge with the same ``client_id``
reconnects.  A malformed message is logged (topic and reason) and acknowledged, so
it is not redelivered forever, without holding back the valid ones.

``shared=True`` speaks MQTT 5 and subscribes to ``$share/{group}/{topic}``: every
ingest instance joins the group and the broker splits the messages between them
(Mosquitto here, EMQX in production).  ``shared=False`` is for MQTT 3.1.1 brokers
such as the embedded amqtt: a plain subscription, so run only one instance.

Payloads are JSON (a position object or array, the API form) or Protocol Buffers
(``Fix`` or ``FixBatch``), told apart by the first byte (``{`` or ``[`` is JSON; no
protobuf message of ours can start with those).  The device in the topic must match
the payload's uniqueId and fills it in when absent; the region is kept as the
attribute ``region``.

That is the default ``decoder``; a bridge for another topic tree and payload format
(OwnTracks, :mod:`pipeline.ingest.owntracks`) passes its own.  A decoder turns one
message into a :class:`DecodedMessage`: fixes, events (published to the ``events``
topic once the fixes are in) and the records it refused.

paho runs its network loop on its own thread; each message is handed to the event
loop with ``run_coroutine_threadsafe`` and published in batches.  At most
``max_in_flight`` messages are held unacknowledged (MQTT 5 tells the broker so with
Receive Maximum; the paho thread also waits when the cap is reached).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pipeline.config import redact_url
from pipeline.ingest.events import EventPublisher
from pipeline.ingest.payloads import (
    ParsedBatch,
    PayloadError,
    Rejection,
    parse_json_positions,
    parse_protobuf_positions,
)
from pipeline.ingest.service import IngestService
from pipeline.kafka import EVENTS, KafkaUnavailable
from pipeline.model import Event, Fix

__all__ = [
    "DecodedMessage",
    "MessageDecoder",
    "MqttBridge",
    "MqttBridgeError",
    "decode_message",
    "decode_positions",
]

log = structlog.get_logger("rastro.ingest.mqtt")

DEFAULT_TOPIC = "gps/+/+"
DEFAULT_GROUP = "rastro-ingest"
MAX_IN_FLIGHT = 1000
BATCH_SIZE = 500
SESSION_EXPIRY_S = 3600
CONNECT_TIMEOUT_S = 15.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
UNKNOWN_IDS_REMEMBERED = 10_000


class MqttBridgeError(RuntimeError):
    """The bridge could not connect or subscribe to the broker."""


@dataclass(frozen=True)
class _Message:
    """One received message, as much as the event loop needs of it."""

    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_ms: int


@dataclass
class DecodedMessage:
    """What one message said: its fixes and events, and the records refused.

    ``rejected`` indexes count records within the message; the bridge logs each
    one and acknowledges the message all the same.
    """

    fixes: list[Fix] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


#: ``decoder(topic, payload, server_time_ms)``; raises
#: :class:`~pipeline.ingest.payloads.PayloadError` for a message it cannot read.
MessageDecoder = Callable[[str, bytes, int], DecodedMessage]


def decode_positions(topic: str, payload: bytes, server_time_ms: int) -> DecodedMessage:
    """The default decoder: :func:`decode_message`'s fixes, no events."""
    batch = decode_message(topic, payload, server_time_ms=server_time_ms)
    return DecodedMessage([fix for _, fix in batch.fixes], [], batch.rejected)


def decode_message(topic: str, payload: bytes, *, server_time_ms: int) -> ParsedBatch:
    """Decode one MQTT message into fixes; the topic names region and device.

    Raises :class:`~pipeline.ingest.payloads.PayloadError` when the topic or the
    payload as a whole cannot be read; single bad records become rejections.
    """
    region, device = _topic_parts(topic)
    if payload.lstrip()[:1] in {b"{", b"["}:
        batch = parse_json_positions(
            payload,
            server_time_ms=server_time_ms,
            protocol="mqtt",
            default_device=device,
        )
    else:
        batch = parse_protobuf_positions(
            payload,
            server_time_ms=server_time_ms,
            protocol="mqtt",
            default_device=device,
        )

    matching = []
    for index, fix in batch.fixes:
        if fix.device != device:
            reason = f"uniqueId {fix.device!r} does not match topic device {device!r}"
            batch.rejected.append(Rejection(index, reason, 400, "topic_mismatch"))
            continue
        fix.attributes["region"] = json.dumps(region)
        matching.append((index, fix))
    batch.fixes = matching
    return batch


def _topic_parts(topic: str) -> tuple[str, str]:
    parts = topic.split("/")
    if len(parts) < 3 or not parts[-1] or not parts[-2]:
        message = f"topic must be gps/{{region}}/{{device}}, got {topic!r}"
        raise PayloadError(message)
    return parts[-2], parts[-1]


class MqttBridge:
    """Subscribes to device topics and publishes their fixes to Kafka (module doc).

    ``client_id`` should be stable across restarts of one instance (and differ
    between instances): the broker keeps the session, and so the unacknowledged
    messages, under it.  ``may_report`` decides whether a device may report
    (default: it is registered in the ingest service's directory).  ``decoder``
    reads a message (default :func:`decode_positions`); the events it returns go
    to ``events_topic``.
    """

    def __init__(
        self,
        url: str,
        ingest: IngestService,
        *,
        shared: bool,
        group: str = DEFAULT_GROUP,
        topic: str = DEFAULT_TOPIC,
        client_id: str | None = None,
        may_report: Callable[[str], Awaitable[bool]] | None = None,
        decoder: MessageDecoder = decode_positions,
        events_topic: str = EVENTS,
        max_in_flight: int = MAX_IN_FLIGHT,
        batch_size: int = BATCH_SIZE,
        session_expiry_s: int = SESSION_EXPIRY_S,
        keepalive_s: int = 30,
    ) -> None:
        self.host, self.port, self._credentials = _broker_address(url)
        self.url = url
        self.ingest = ingest
        self.shared = shared
        self.group = group
        self.topic = topic
        self.subscription = f"$share/{group}/{topic}" if shared else topic
        self.client_id = client_id or f"{group}-{socket.gethostname()}-{os.getpid()}"
        self.may_report = may_report or ingest.known_device
        self.decoder = decoder
        self.events = EventPublisher(ingest.producer, events_topic)
        if not 1 <= max_in_flight <= 65535:
            message = f"max_in_flight must be from 1 to 65535, got {max_in_flight!r}"
            raise ValueError(message)
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s

        self.received = 0
        self.acked = 0
        self.malformed = 0
        self._dropped = 0
        self._room = threading.BoundedSemaphore(max_in_flight)
        self._generation = 0
        self._stopping = threading.Event()
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Message] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None
        self._unknown: OrderedDict[str, None] = OrderedDict()

    @property
    def unacked(self) -> int:
        """Messages received and not yet acknowledged to the broker."""
        return self.received - self.acked - self._dropped

    async def start(self) -> None:
        """Connect, subscribe and start publishing; wait for the first SUBACK."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._subscribed = asyncio.Event()
        self._stopping.clear()
        self._client = self._make_client()
        self._worker = asyncio.create_task(self._work(), name="rastro-mqtt-bridge")

        self._client.loop_start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._subscribed.wait()
        except TimeoutError:
            await self.stop()
            message = (
                f"no subscription to {self.subscription!r} on {redact_url(self.url)} "
                f"within {CONNECT_TIMEOUT_S} s"
            )
            raise MqttBridgeError(message) from None

    async def stop(self) -> None:
        """Disconnect; messages not yet acknowledged stay with the broker's session."""
        self._stopping.set()
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        log.info(
            "mqtt_bridge_stopped",
            received=self.received,
            acked=self.acked,
            malformed=self.malformed,
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the paho thread -------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        version = paho.MQTTv5 if self.shared else paho.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=version,
            clean_session=None if self.shared else False,
            manual_ack=True,
        )
        if self._credentials is not None:
            client.username_pw_set(*self._credentials)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        # A failing callback must not end paho's network thread; paho logs it.
        client.suppress_exceptions = True
        client.enable_logger(logging.getLogger("rastro.ingest.mqtt.paho"))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message

        if self.shared:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry_s
            properties.ReceiveMaximum = self.max_in_flight
            client.connect_async(
                self.host,
                self.port,
                self.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        else:
            client.connect_async(self.host, self.port, self.keepalive_s)
        return client

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason: Any,
        _properties: Any,
    ) -> None:
        if reason.is_failure:
            log.error(
                "mqtt_bridge_refused", broker=redact_url(self.url), reason=str(reason)
            )
            return
        self._generation += 1
        log.info(
            "mqtt_bridge_connected",
            broker=redact_url(self.url),
            client_id=self.client_id,
            subscription=self.subscription,
            shared=self.shared,
            protocol="MQTT 5" if self.shared else "MQTT 3.1.1",
            session_present=flags.session_present,
        )
        if not self.shared:
            log.info(
                "mqtt_bridge_plain_subscription",
                topic=self.topic,
                reason="no shared subscriptions (MQTT 3.1.1): run one ingest instance",
            )
        client.subscribe(self.subscription, qos=1)

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, reasons: Any, _p: Any
    ) -> None:
        if any(code.is_failure for code in reasons):
            log.error(
                "mqtt_bridge_subscribe_refused",
                subscription=self.subscription,
                reasons=[str(code) for code in reasons],
            )
            return
        if self._loop is not None and self._subscribed is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason: Any,
        _properties: Any,
    ) -> None:
        if not self._stopping.is_set():
            log.warning(
                "mqtt_bridge_disconnected",
                broker=redact_url(self.url),
                reason=str(reason),
            )

    def _on_message(
        self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage
    ) -> None:
        # Waiting here (on paho's thread) is the backpressure: the broker's socket is
        # not read until publishes to Kafka catch up.
        while not self._room.acquire(timeout=0.5):
            if self._stopping.is_set():
                return
        self.received += 1
        item = _Message(
            self._generation,
            message.mid,
            message.qos,
            message.topic,
            bytes(message.payload),
            time.time_ns() // 1_000_000,
        )
        assert self._loop is not None and self._queue is not None
        try:
            asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        except RuntimeError:  # the event loop is closed: the broker keeps the message
            self._room.release()

    # -- the event loop ----------------------------------------------------------------

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            messages = [await self._queue.get()]
            while len(messages) < self.batch_size and not self._queue.empty():
                messages.append(self._queue.get_nowait())
            await self._handle(messages)

    async def _handle(self, messages: list[_Message]) -> None:
        fixes: list[tuple[int, Fix]] = []
        events: list[tuple[int, Event]] = []
        for number, message in enumerate(messages):
            decoded = self._decode(message)
            fixes.extend((number, fix) for fix in decoded.fixes)
            events.extend((number, event) for event in decoded.events)

        screened = await self.ingest.screen(fixes, self.may_report)
        screened_events = await self.events.screen(events, self.may_report)
        self._log_refused([*screened.rejected, *screened_events.rejected], messages)
        admitted_events = [event for _, event in screened_events.admitted]
        if not await self._publish_until_acked(screened.admitted, admitted_events):
            return  # stopping: the broker redelivers what is left unacknowledged
        for message in messages:
            self._ack(message)

    def _decode(self, message: _Message) -> DecodedMessage:
        try:
            decoded = self.decoder(message.topic, message.payload, message.received_ms)
        except PayloadError as error:
            self._malformed(message.topic, str(error))
            return DecodedMessage()
        for rejection in decoded.rejected:
            self._malformed(
                message.topic, f"record {rejection.index}: {rejection.reason}"
            )
        self.ingest.rejected.update(rejection.kind for rejection in decoded.rejected)
        return decoded

    def _malformed(self, topic: str, reason: str) -> None:
        self.malformed += 1
        log.warning("mqtt_payload_malformed", topic=topic, reason=reason)

    def _log_refused(self, rejected: list[Rejection], messages: list[_Message]) -> None:
        for rejection in rejected:
            topic = messages[rejection.index].topic
            if rejection.kind != "unknown_device":
                log.warning("mqtt_fix_refused", topic=topic, reason=rejection.reason)
            elif self._first_unknown(topic):
                log.warning("mqtt_unknown_device", topic=topic)

    def _first_unknown(self, topic: str) -> bool:
        if topic in self._unknown:
            return False
        self._unknown[topic] = None
        if len(self._unknown) > UNKNOWN_IDS_REMEMBERED:
            self._unknown.popitem(last=False)
        return True

    async def _publish_until_acked(
        self, fixes: list[tuple[int, Fix]], events: list[Event]
    ) -> bool:
        pause = RETRY_MIN_S
        failed_before = False
        fixes_done = False
        while not self._stopping.is_set():
            try:
                if not fixes_done:
                    await self.ingest.publish(fixes)
                    fixes_done = True  # a retry for the events must not resend them
                await self.events.publish(events)
            except KafkaUnavailable as error:
                if not failed_before:
                    log.warning("mqtt_kafka_unavailable", error=str(error))
                failed_before = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            if failed_before:
                log.info("mqtt_kafka_recovered", fixes=len(fixes), events=len(events))
            return True
        return False

    def _ack(self, message: _Message) -> None:
        client = self._client
        if client is not None and message.generation == self._generation:
            # A message from an earlier connection is redelivered on this one; its
            # old packet id means nothing to the broker now.
            if message.qos > 0:
                client.ack(message.mid, message.qos)
            self.acked += 1
        else:
            self._dropped += 1
        self._room.release()


def _broker_address(url: str) -> tuple[str, int, tuple[str, str | None] | None]:
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
        message = f"MQTT url must be mqtt://HOST:PORT, got {redact_url(url)!r}"
        raise ValueError(message)
    credentials = None
    if parts.username:
        password = unquote(parts.password) if parts.password else None
        credentials = (unquote(parts.username), password)
    return parts.hostname, parts.port or 1883, credentials
