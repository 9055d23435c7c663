"""The live feed: one hub per process, fanning fixes and events out to WebSockets.

:class:`LiveHub` consumes a source of protobuf ``Fix`` payloads (in production
``pipeline.kafka.tail_topic`` on the ``live`` topic; in tests any async iterator)
and offers each fix, once decoded, to every subscription whose device set holds the
fix's device, as ``{"type": "position", "position": {...}}``.  Likewise, from a
second source of protobuf ``Event`` payloads (the ``events`` topic), each event
goes to every subscription that sees its device as ``{"type": "event", "event":
{...}}``; when the event matches some of that user's notification rules with a
``web`` channel, the message also carries ``"notify": [rule ids]``, which is what
the dashboards announce.  Each subscription has its own bounded queue: when a
client reads too slowly its oldest pending messages are dropped (and counted), so
one slow client never delays the others or grows memory.

A connection's device set and web rules are re-read from the database every
``refresh_s`` seconds, and at once when this process changes that user's devices
or rules (:meth:`LiveHub.devices_changed`, :meth:`LiveHub.rules_changed`), so a
deleted device stops being pushed and a new one starts.  Administrators see every
device.

Authentication is the session cookie or an ``Authorization: Bearer`` header.  A
``?token=`` query parameter is deliberately not accepted: URLs end up in access
logs, proxies and browser history.  Browsers connect with the cookie (cookies do
not depend on the port, so a dashboard on another port of the same host has it).
An unauthenticated handshake is refused before it is accepted, which clients see
as HTTP 403.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from pipeline.api.errors import DATABASE_DOWN, ApiError
from pipeline.model import Fix
from pipeline.notify.messages import EventUndecodable, decode_event, event_document
from pipeline.notify.store import WebRule, web_rules
from pipeline.store.history import fix_document

__all__ = [
    "DeviceLoader",
    "LiveHub",
    "LiveSource",
    "RuleLoader",
    "Subscription",
    "serve_connection",
]

log = structlog.get_logger()

LiveSource = Callable[[], AsyncIterator[bytes]]
_REFRESH_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_DOWN, ApiError)
DeviceLoader = Callable[[], Awaitable[Set[str]]]
RuleLoader = Callable[[], Awaitable[Sequence[WebRule]]]


@dataclass(eq=False)
class Subscription:
    """One WebSocket client's view of the feed.

    ``devices`` is the set of uniqueIds it may see; ``None`` means every device.
    Change it through :meth:`LiveHub.set_devices`, which keeps the hub's index.
    ``web_rules`` are the user's notification rules with a web channel.
    """

    user_id: int
    devices: frozenset[str] | None
    queue: asyncio.Queue[dict[str, Any]]
    dropped: int = 0
    refresh: asyncio.Event = field(default_factory=asyncio.Event)
    web_rules: tuple[WebRule, ...] = ()

    def deliver(self, message: dict[str, Any]) -> None:
        """Queue ``message``, dropping the oldest pending one when the queue is full."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(message)


class LiveHub:
    """Fans the fixes and events of its sources out to many subscriptions.

    ``events_source`` may also be set after construction, before :meth:`run`.
    """

    def __init__(
        self,
        source: LiveSource | None,
        *,
        events_source: LiveSource | None = None,
        queue_size: int = 256,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        if queue_size < 1:
            message = f"queue_size must be at least 1, got {queue_size!r}"
            raise ValueError(message)
        self._source = source
        self.events_source = events_source
        self._queue_size = queue_size
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._subscriptions: set[Subscription] = set()
        # Who sees what: an index by device, so a fix costs its audience, not
        # every connection.  Subscriptions that see every device sit apart.
        self._by_device: dict[str, set[Subscription]] = {}
        self._everything: set[Subscription] = set()
        self.undecodable = 0

    @property
    def subscriptions(self) -> int:
        """How many clients are subscribed."""
        return len(self._subscriptions)

    def subscribe(self, user_id: int, devices: frozenset[str] | None) -> Subscription:
        """Start delivering the given devices' fixes to a new subscription."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        subscription = Subscription(user_id, devices, queue)
        self._subscriptions.add(subscription)
        self._index(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to a subscription (idempotent)."""
        if subscription in self._subscriptions:
            self._unindex(subscription)
            self._subscriptions.discard(subscription)

    def set_devices(
        self, subscription: Subscription, devices: frozenset[str] | None
    ) -> None:
        """Change which devices a subscription sees (``None``: every device)."""
        if subscription not in self._subscriptions:
            return
        self._unindex(subscription)
        subscription.devices = devices
        self._index(subscription)

    def devices_changed(self, user_id: int) -> None:
        """The user's devices changed: make its subscriptions re-read them now."""
        for subscription in self._subscriptions:
            if subscription.user_id == user_id:
                subscription.refresh.set()

    def rules_changed(self, user_id: int) -> None:
        """The user's notification rules changed: re-read them now."""
        self.devices_changed(user_id)

    def publish(self, payload: bytes) -> int:
        """Decode one ``Fix`` and offer it to every subscription; returns how many."""
        fix = Fix()
        try:
            fix.ParseFromString(payload)
        except Exception:  # protobuf's DecodeError; its stubs are not installed
            self.undecodable += 1
            log.warning("live_fix_undecodable", size=len(payload))
            return 0

        audience = self._everything | self._by_device.get(fix.device, set())
        if not audience:
            return 0
        message = {"type": "position", "position": fix_document(fix)}
        for subscription in audience:
            subscription.deliver(message)
        return len(audience)

    def publish_event(self, payload: bytes) -> int:
        """Decode one ``Event`` and offer it to every subscription seeing its device.

        Returns to how many.  A subscription whose web rules match the event gets
        their ids in ``notify``.
        """
        try:
            event = decode_event(payload)
        except EventUndecodable:
            self.undecodable += 1
            log.warning("live_event_undecodable", size=len(payload))
            return 0

        audience = self._everything | self._by_device.get(event.device, set())
        if not audience:
            return 0
        message = {"type": "event", "event": event_document(event)}
        for subscription in audience:
            notify = [
                rule.id
                for rule in subscription.web_rules
                if rule.matches(event.device, event.type)
            ]
            subscription.deliver({**message, "notify": notify} if notify else message)
        return len(audience)

    async def run(self) -> None:
        """Consume the sources until cancelled, reopening one after it fails.

        The pause before reopening doubles after each failure without a single
        message (up to ``max_retry_s``), so a broker that is down is not hammered.
        """
        async with asyncio.TaskGroup() as tasks:
            if self._source is not None:
                tasks.create_task(self._follow("live", self._source, self.publish))
            if self.events_source is not None:
                tasks.create_task(
                    self._follow("events", self.events_source, self.publish_event)
                )

    async def _follow(
        self, name: str, source: LiveSource, publish: Callable[[bytes], int]
    ) -> None:
        pause_s = self._retry_s
        while True:
            received = False
            try:
                async for payload in source():
                    received = True
                    publish(payload)
                log.warning("live_source_ended", source=name)
            except Exception as error:
                log.warning(
                    "live_source_failed",
                    source=name,
                    error=repr(error),
                    retry_s=pause_s,
                )
            if received:
                pause_s = self._retry_s
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, self._max_retry_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LiveHub]:
        """Run :meth:`run` in the background for the duration of the block."""
        consumer = asyncio.create_task(self.run(), name="live-hub")
        try:
            yield self
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer

    def _index(self, subscription: Subscription) -> None:
        if subscription.devices is None:
            self._everything.add(subscription)
            return
        for device in subscription.devices:
            self._by_device.setdefault(device, set()).add(subscription)

    def _unindex(self, subscription: Subscription) -> None:
        self._everything.discard(subscription)
        for device in subscription.devices or ():
            watchers = self._by_device.get(device)
            if watchers is None:
                continue
            watchers.discard(subscription)
            if not watchers:
                del self._by_device[device]


class _ClientGone(Exception):
    """The WebSocket client disconnected or can no longer be written to."""


async def serve_connection(
    websocket: WebSocket,
    hub: LiveHub,
    subscription: Subscription,
    load_devices: DeviceLoader,
    refresh_s: float,
) -> None:
    """Push the subscription's fixes and events to an accepted WebSocket until it
    closes.

    The user's web rules are read through the application's database pool
    (``websocket.app.state.context``), now and at every refresh.
    """
    load_rules = _rule_loader(websocket, subscription.user_id)
    try:
        await _reload_rules(subscription, load_rules)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_pump(websocket, subscription))
            tasks.create_task(_listen(websocket))
            tasks.create_task(
                _refresh(hub, subscription, load_devices, load_rules, refresh_s)
            )
    except* _ClientGone:
        pass
    finally:
        hub.unsubscribe(subscription)
        if subscription.dropped:
            log.info(
                "live_client_dropped_fixes",
                user=subscription.user_id,
                dropped=subscription.dropped,
            )


async def _pump(websocket: WebSocket, subscription: Subscription) -> None:
    while True:
        message = await subscription.queue.get()
        try:
            await websocket.send_json(message)
        except (WebSocketDisconnect, RuntimeError, OSError) as error:
            raise _ClientGone from error


async def _listen(websocket: WebSocket) -> None:
    # Clients have nothing to say; reading is how a close is noticed.
    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            raise _ClientGone


async def _refresh(
    hub: LiveHub,
    subscription: Subscription,
    load_devices: DeviceLoader,
    load_rules: RuleLoader,
    refresh_s: float,
) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(refresh_s):
                await subscription.refresh.wait()
        subscription.refresh.clear()
        if subscription.devices is not None:
            try:
                hub.set_devices(subscription, frozenset(await load_devices()))
            except _REFRESH_ERRORS as error:
                log.warning("live_refresh_failed", error=type(error).__name__)
        await _reload_rules(subscription, load_rules)


def _rule_loader(websocket: WebSocket, user_id: int) -> RuleLoader:
    pool = websocket.app.state.context.pool

    async def load() -> list[WebRule]:
        return await web_rules(pool, user_id)

    return load


async def _reload_rules(subscription: Subscription, load_rules: RuleLoader) -> None:
    try:
        subscription.web_rules = tuple(await load_rules())
    except _REFRESH_ERRORS as error:
        log.warning("live_rules_refresh_failed", error=type(error).__name__)
