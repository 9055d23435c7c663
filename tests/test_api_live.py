"""The live hub, the WebSocket feed over a real Hypercorn, and HTTP/2 cleartext."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from pipeline.api.app import ApiContext, create_api
from pipeline.api.auth import SESSION_COOKIE
from pipeline.api.live import LiveHub
from pipeline.model import Fix
from tests.fixtures.api import PASSWORD, Caller, running_api, unique_id


def _fix(device: str, minute: int = 0) -> bytes:
    fix = Fix(
        device=device,
        fix_time_ms=1_772_352_000_000 + minute * 60_000,
        server_time_ms=1_772_352_000_000 + minute * 60_000,
        latitude=48.137,
        longitude=11.575,
        valid=True,
        h3=0x8928308280FFFFF,
    )
    return fix.SerializeToString()


class QueueSource:
    """A live source the test feeds by hand: an async iterator over a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.opened = 0

    async def __call__(self) -> AsyncIterator[bytes]:
        self.opened += 1
        while True:
            yield await self.queue.get()


class TestLiveHub:
    def test_hub_offers_only_visible_devices(self) -> None:
        hub = LiveHub(None)
        mine = hub.subscribe(1, frozenset({"a"}))
        everything = hub.subscribe(2, None)

        delivered = hub.publish(_fix("b"))

        assert delivered == 1
        assert mine.queue.empty()
        message = everything.queue.get_nowait()
        assert message["type"] == "position"
        assert message["position"]["uniqueId"] == "b"
        assert message["position"]["h3"] == "8928308280fffff"

    def test_hub_slow_client_drops_oldest(self) -> None:
        hub = LiveHub(None, queue_size=2)
        slow = hub.subscribe(1, None)

        for minute in range(5):
            hub.publish(_fix("a", minute))

        kept = [slow.queue.get_nowait()["position"]["time"] for _ in range(2)]
        assert kept == ["2026-03-01T08:03:00Z", "2026-03-01T08:04:00Z"]
        assert slow.dropped == 3

    def test_hub_slow_client_does_not_hold_back_others(self) -> None:
        hub = LiveHub(None, queue_size=1)
        slow = hub.subscribe(1, None)
        fast = hub.subscribe(2, None)

        for minute in range(3):
            hub.publish(_fix("a", minute))
            fast.queue.get_nowait()

        assert slow.dropped == 2
        assert fast.dropped == 0

    def test_hub_undecodable_payload_counted(self) -> None:
        hub = LiveHub(None)
        subscription = hub.subscribe(1, None)

        delivered = hub.publish(b"\xff\xff\xff not a fix")

        assert delivered == 0
        assert hub.undecodable == 1
        assert subscription.queue.empty()

    def test_hub_unsubscribed_gets_nothing(self) -> None:
        hub = LiveHub(None)
        subscription = hub.subscribe(1, None)

        hub.unsubscribe(subscription)
        hub.publish(_fix("a"))

        assert subscription.queue.empty()
        assert hub.subscriptions == 0

    def test_hub_devices_changed_wakes_only_that_user(self) -> None:
        hub = LiveHub(None)
        alices = hub.subscribe(1, frozenset())
        bobs = hub.subscribe(2, frozenset())

        hub.devices_changed(1)

        assert alices.refresh.is_set()
        assert not bobs.refresh.is_set()

    def test_hub_set_devices_changes_audience(self) -> None:
        hub = LiveHub(None)
        subscription = hub.subscribe(1, frozenset({"a"}))

        hub.set_devices(subscription, frozenset({"b"}))
        to_old = hub.publish(_fix("a"))
        to_new = hub.publish(_fix("b"))

        assert (to_old, to_new) == (0, 1)
        assert subscription.queue.get_nowait()["position"]["uniqueId"] == "b"

    def test_hub_queue_size_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="queue_size must be at least 1, got 0"):
            LiveHub(None, queue_size=0)

    async def test_hub_reopens_failed_source(self) -> None:
        """A source that fails is opened again; fixes after that still arrive."""
        attempts = 0

        async def flaky() -> AsyncIterator[bytes]:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise ConnectionError("broker went away")
            yield _fix("a")
            await asyncio.Event().wait()

        hub = LiveHub(flaky, retry_s=0.01)
        subscription = hub.subscribe(1, None)

        async with hub.running():
            message = await asyncio.wait_for(subscription.queue.get(), timeout=5)

        assert attempts == 2
        assert message["position"]["uniqueId"] == "a"


# -- through a real server -------------------------------------------------------------


@pytest.fixture
def live_source() -> QueueSource:
    return QueueSource()


@pytest.fixture
def live_app(
    api_pool: asyncpg.Pool, api_redis: aioredis.Redis, live_source: QueueSource
) -> Starlette:
    context = ApiContext(
        pool=api_pool, redis=api_redis, live_source=live_source, live_refresh_s=0.3
    )
    return create_api(context)


@pytest.fixture
async def live_server(live_app: Starlette) -> AsyncIterator[str]:
    async with running_api(live_app) as base:
        yield base


def _ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/live"


async def _subscribers(app: Starlette, count: int) -> None:
    hub: LiveHub = app.state.hub
    async with asyncio.timeout(5):
        # The hub has no event for this; a short poll is fine in a test.
        while hub.subscriptions < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _next_position(socket: ClientConnection) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(socket.recv(), timeout=5))
    assert message["type"] == "position"
    position: dict[str, Any] = message["position"]
    return position


async def _register(base: str, owner: Caller) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, headers=owner.headers) as client:
        response = await client.post(
            "/api/v1/devices", json={"uniqueId": unique_id(), "name": "van"}
        )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.mark.integration
class TestLiveWebSocket:
    async def test_live_refuses_unauthenticated(self, live_server: str) -> None:
        with pytest.raises(InvalidStatus, match="HTTP 403"):
            async with connect(_ws_url(live_server)):
                pass

    async def test_live_refuses_bad_token(self, live_server: str) -> None:
        headers = {"Authorization": "Bearer forged"}
        with pytest.raises(InvalidStatus, match="HTTP 403"):
            async with connect(_ws_url(live_server), additional_headers=headers):
                pass

    async def test_live_ignores_query_token(
        self, live_server: str, alice: Caller
    ) -> None:
        """``?token=`` is not accepted: secrets stay out of URLs."""
        url = f"{_ws_url(live_server)}?token={alice.token}"
        with pytest.raises(InvalidStatus, match="HTTP 403"):
            async with connect(url):
                pass

    async def test_live_pushes_only_own_devices(
        self,
        live_server: str,
        live_app: Starlette,
        live_source: QueueSource,
        alice: Caller,
        bob: Caller,
    ) -> None:
        """Each user gets its own devices' fixes and never the other's."""
        alices = await _register(live_server, alice)
        bobs = await _register(live_server, bob)
        url = _ws_url(live_server)

        async with (
            connect(url, additional_headers=alice.headers) as alice_socket,
            connect(url, additional_headers=bob.headers) as bob_socket,
        ):
            await _subscribers(live_app, 2)
            live_source.queue.put_nowait(_fix(bobs["uniqueId"], 0))
            live_source.queue.put_nowait(_fix(alices["uniqueId"], 1))
            live_source.queue.put_nowait(_fix("unregistered", 2))
            live_source.queue.put_nowait(_fix(bobs["uniqueId"], 3))

            alice_first = await _next_position(alice_socket)
            bob_first = await _next_position(bob_socket)
            bob_second = await _next_position(bob_socket)

        assert alice_first["uniqueId"] == alices["uniqueId"]
        assert alice_first["time"] == "2026-03-01T08:01:00Z"
        assert [bob_first["time"], bob_second["time"]] == [
            "2026-03-01T08:00:00Z",
            "2026-03-01T08:03:00Z",
        ]
        assert {bob_first["uniqueId"], bob_second["uniqueId"]} == {bobs["uniqueId"]}

    async def test_live_follows_device_changes(
        self,
        live_server: str,
        live_app: Starlette,
        live_source: QueueSource,
        alice: Caller,
    ) -> None:
        """A device registered or deleted after connecting is picked up."""
        first = await _register(live_server, alice)
        url = _ws_url(live_server)

        async with connect(url, additional_headers=alice.headers) as socket:
            await _subscribers(live_app, 1)
            added = await _register(live_server, alice)
            await asyncio.sleep(0.1)
            live_source.queue.put_nowait(_fix(added["uniqueId"], 1))
            assert (await _next_position(socket))["uniqueId"] == added["uniqueId"]

            async with httpx.AsyncClient(
                base_url=live_server, headers=alice.headers
            ) as client:
                await client.delete(f"/api/v1/devices/{added['id']}")
            await asyncio.sleep(0.1)
            live_source.queue.put_nowait(_fix(added["uniqueId"], 2))
            live_source.queue.put_nowait(_fix(first["uniqueId"], 3))
            after_delete = await _next_position(socket)

        assert after_delete["uniqueId"] == first["uniqueId"]

    async def test_live_periodic_refresh_sees_other_writers(
        self,
        live_server: str,
        live_app: Starlette,
        live_source: QueueSource,
        api_pool: asyncpg.Pool,
        alice: Caller,
    ) -> None:
        """A device added by another process (straight into the table) shows up."""
        device = unique_id()
        async with connect(_ws_url(live_server), additional_headers=alice.headers) as s:
            await _subscribers(live_app, 1)
            await api_pool.execute(
                "INSERT INTO devices (unique_id, name, owner_id) VALUES ($1, 'x', $2)",
                device,
                alice.user.id,
            )
            await asyncio.sleep(0.8)
            live_source.queue.put_nowait(_fix(device))

            position = await _next_position(s)

        assert position["uniqueId"] == device

    async def test_live_cookie_authenticates(
        self,
        live_server: str,
        live_app: Starlette,
        live_source: QueueSource,
        alice: Caller,
    ) -> None:
        device = await _register(live_server, alice)
        async with httpx.AsyncClient(base_url=live_server) as client:
            login = await client.post(
                "/api/v1/session", json={"user": "alice", "password": PASSWORD}
            )
        cookie = {"Cookie": f"{SESSION_COOKIE}={login.json()['token']}"}

        async with connect(_ws_url(live_server), additional_headers=cookie) as socket:
            await _subscribers(live_app, 1)
            live_source.queue.put_nowait(_fix(device["uniqueId"]))
            position = await _next_position(socket)

        assert position["uniqueId"] == device["uniqueId"]

    async def test_live_admin_sees_everyone(
        self,
        live_server: str,
        live_app: Starlette,
        live_source: QueueSource,
        alice: Caller,
        admin: Caller,
    ) -> None:
        device = await _register(live_server, alice)

        async with connect(_ws_url(live_server), additional_headers=admin.headers) as s:
            await _subscribers(live_app, 1)
            live_source.queue.put_nowait(_fix(device["uniqueId"]))
            position = await _next_position(s)

        assert position["uniqueId"] == device["uniqueId"]

    async def test_live_disconnect_unsubscribes(
        self, live_server: str, live_app: Starlette, alice: Caller
    ) -> None:
        async with connect(_ws_url(live_server), additional_headers=alice.headers):
            await _subscribers(live_app, 1)

        hub: LiveHub = live_app.state.hub
        async with asyncio.timeout(5):
            while hub.subscriptions:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert hub.subscriptions == 0


@pytest.mark.integration
class TestHypercorn:
    async def test_http2_cleartext_served(
        self, live_server: str, alice: Caller
    ) -> None:
        async with httpx.AsyncClient(
            base_url=live_server, http1=False, http2=True, headers=alice.headers
        ) as client:
            response = await client.get("/api/v1/devices")

        assert response.http_version == "HTTP/2"
        assert response.status_code == 200
        assert response.json() == []

    async def test_http1_served(self, live_server: str) -> None:
        async with httpx.AsyncClient(base_url=live_server) as client:
            response = await client.get("/api/v1/health")

        assert response.http_version == "HTTP/1.1"
        assert response.json() == {"status": "ok", "ready": True}
