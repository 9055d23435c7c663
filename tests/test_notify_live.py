"""Events on the live WebSocket: only for devices the user may see, marked when
one of the user's web rules matches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect

from pipeline.api.app import ApiContext, create_api
from pipeline.api.live import LiveHub, LiveSource
from pipeline.kafka import DurableProducer, tail_topic
from pipeline.model import Event, Fix
from pipeline.notify.store import WebRule
from tests.fixtures.api import Caller, running_api, unique_id

T0_MS = 1_772_352_000_000


def _event(device: str, kind: str = "alarm", second: int = 0) -> bytes:
    event = Event(device=device, type=kind, event_time_ms=T0_MS + second * 1000)
    event.attributes["alarm"] = '"sos"'
    return event.SerializeToString()


class QueueSource:
    """A source the test feeds by hand."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def __call__(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.queue.get()


class TestHubEvents:
    def test_event_only_to_visible(self) -> None:
        hub = LiveHub(None)
        mine = hub.subscribe(1, frozenset({"a"}))
        other = hub.subscribe(2, frozenset({"b"}))
        everything = hub.subscribe(3, None)

        delivered = hub.publish_event(_event("a", "alarm", 1))

        assert delivered == 2
        assert other.queue.empty()
        message = mine.queue.get_nowait()
        assert message == {
            "type": "event",
            "event": {
                "uniqueId": "a",
                "type": "alarm",
                "time": "2026-03-01T08:00:01Z",
                "attributes": {"alarm": "sos"},
            },
        }
        assert everything.queue.get_nowait() == message

    def test_event_marked_by_web_rules(self) -> None:
        hub = LiveHub(None)
        subscription = hub.subscribe(1, frozenset({"a", "b"}))
        subscription.web_rules = (
            WebRule(5, "alarms of a", frozenset({"alarm"}), frozenset({"a"})),
            WebRule(6, "anything", frozenset(), None),
            WebRule(7, "idle only", frozenset({"idle"}), None),
        )

        hub.publish_event(_event("a", "alarm"))
        hub.publish_event(_event("b", "alarm"))

        assert subscription.queue.get_nowait()["notify"] == [5, 6]
        assert subscription.queue.get_nowait()["notify"] == [6]

    def test_unmatched_event_not_marked(self) -> None:
        hub = LiveHub(None)
        subscription = hub.subscribe(1, None)
        subscription.web_rules = (WebRule(7, "idle", frozenset({"idle"}), None),)

        hub.publish_event(_event("a", "alarm"))

        assert "notify" not in subscription.queue.get_nowait()

    def test_undecodable_event_counted(self) -> None:
        hub = LiveHub(None)
        subscription = hub.subscribe(1, None)

        delivered = hub.publish_event(b"\xff\xff nonsense")

        assert delivered == 0
        assert hub.undecodable == 1
        assert subscription.queue.empty()

    async def test_hub_follows_both_sources(self) -> None:
        fixes, events = QueueSource(), QueueSource()
        hub = LiveHub(fixes, events_source=events)
        subscription = hub.subscribe(1, None)
        fix = Fix(device="a", fix_time_ms=T0_MS, latitude=48.1, longitude=11.5)

        async with hub.running():
            events.queue.put_nowait(_event("a"))
            first = await asyncio.wait_for(subscription.queue.get(), timeout=5)
            fixes.queue.put_nowait(fix.SerializeToString())
            second = await asyncio.wait_for(subscription.queue.get(), timeout=5)

        assert [first["type"], second["type"]] == ["event", "position"]


# -- through a real server -------------------------------------------------------------


def _app(pool: asyncpg.Pool, redis: aioredis.Redis, events: LiveSource) -> Starlette:
    context = ApiContext(
        pool=pool, redis=redis, events_source=events, live_refresh_s=0.3
    )
    app = create_api(context)
    # create_api hands the hub only live_source so far (see the notifications
    # report): until it passes context.events_source too, it is handed over here.
    app.state.hub.events_source = context.events_source
    return app


async def _register(base: str, owner: Caller) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, headers=owner.headers) as client:
        response = await client.post(
            "/api/v1/devices", json={"uniqueId": unique_id(), "name": "van"}
        )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _subscribed(app: Starlette, count: int) -> None:
    hub: LiveHub = app.state.hub
    async with asyncio.timeout(5):
        while hub.subscriptions < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _next_event(socket: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), 10))
    assert message["type"] == "event"
    return message


def _ws(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/live"


@pytest.mark.integration
class TestLiveEvents:
    async def test_events_only_to_who_may_see(
        self,
        api_pool: asyncpg.Pool,
        api_redis: aioredis.Redis,
        alice: Caller,
        bob: Caller,
        admin: Caller,
    ) -> None:
        events = QueueSource()
        app = _app(api_pool, api_redis, events)

        async with running_api(app) as base:
            alices = (await _register(base, alice))["uniqueId"]
            bobs = (await _register(base, bob))["uniqueId"]
            async with (
                connect(_ws(base), additional_headers=alice.headers) as alice_ws,
                connect(_ws(base), additional_headers=bob.headers) as bob_ws,
                connect(_ws(base), additional_headers=admin.headers) as admin_ws,
            ):
                await _subscribed(app, 3)
                for payload in (
                    _event(bobs, second=1),
                    _event("unregistered", second=2),
                    _event(alices, second=3),
                ):
                    events.queue.put_nowait(payload)
                alice_got = await _next_event(alice_ws)
                bob_got = await _next_event(bob_ws)
                admin_got = [await _next_event(admin_ws) for _ in range(3)]

        assert alice_got["event"]["uniqueId"] == alices
        assert bob_got["event"]["uniqueId"] == bobs
        # An administrator sees every device, as on the position feed.
        assert [m["event"]["uniqueId"] for m in admin_got] == [
            bobs,
            "unregistered",
            alices,
        ]

    async def test_rule_created_marks_events(
        self, api_pool: asyncpg.Pool, api_redis: aioredis.Redis, alice: Caller
    ) -> None:
        """A web rule created over the API marks the next matching event."""
        events = QueueSource()
        app = _app(api_pool, api_redis, events)

        async with running_api(app) as base:
            device = (await _register(base, alice))["uniqueId"]
            async with connect(_ws(base), additional_headers=alice.headers) as ws:
                await _subscribed(app, 1)
                events.queue.put_nowait(_event(device, "geofenceEnter", 1))
                before = await _next_event(ws)
                async with httpx.AsyncClient(
                    base_url=base, headers=alice.headers
                ) as client:
                    created = await client.post(
                        "/api/v1/notifications",
                        json={
                            "name": "arrivals",
                            "eventTypes": ["geofenceEnter"],
                            "channels": [{"type": "web"}],
                        },
                    )
                await asyncio.sleep(0.2)
                events.queue.put_nowait(_event(device, "geofenceEnter", 2))
                events.queue.put_nowait(_event(device, "alarm", 3))
                matched = await _next_event(ws)
                unmatched = await _next_event(ws)

        assert "notify" not in before
        assert matched["notify"] == [created.json()["id"]]
        assert matched["event"]["time"] == "2026-03-01T08:00:02Z"
        assert "notify" not in unmatched

    async def test_events_from_kafka_topic(
        self,
        api_pool: asyncpg.Pool,
        api_redis: aioredis.Redis,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        alice: Caller,
        bob: Caller,
    ) -> None:
        """An event written to the events topic reaches its owner's WebSocket."""
        topic = kafka_topic(partitions=2)
        tailing = asyncio.Event()
        app = _app(
            api_pool,
            api_redis,
            lambda: tail_topic(kafka_bootstrap, topic, ready=tailing),
        )

        async with running_api(app) as base:
            alices = (await _register(base, alice))["uniqueId"]
            bobs = (await _register(base, bob))["uniqueId"]
            async with (
                connect(_ws(base), additional_headers=alice.headers) as alice_ws,
                connect(_ws(base), additional_headers=bob.headers) as bob_ws,
            ):
                await asyncio.wait_for(tailing.wait(), timeout=30)
                await _subscribed(app, 2)
                async with DurableProducer(kafka_bootstrap) as producer:
                    await producer.send_many(
                        topic,
                        [
                            (bobs.encode(), _event(bobs, "overspeed", 1)),
                            (alices.encode(), _event(alices, "idle", 2)),
                        ],
                    )
                alice_got = await _next_event(alice_ws)
                bob_got = await _next_event(bob_ws)

        assert (alice_got["event"]["uniqueId"], alice_got["event"]["type"]) == (
            alices,
            "idle",
        )
        assert (bob_got["event"]["uniqueId"], bob_got["event"]["type"]) == (
            bobs,
            "overspeed",
        )
