"""End to end: a fix sent five ways reaches latest positions, history and the WebSocket.

Rastro runs as a user runs it (``rastro serve`` in a child process).  The full-mode run
uses Debian's PostgreSQL, Redis and Mosquitto and its own Kafka broker; the embedded run
gives no addresses at all, so every service is the embedded default.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import websockets

from pipeline.model import Fix, FixBatch, format_time_ms
from tests.fixtures.rastro import ADMIN_PASSWORD, RastroUnderTest, start_rastro
from tests.fixtures.trackers import gt06_ack, gt06_location, gt06_login

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

ARRIVAL_DEADLINE_S = 5.0


@pytest.fixture(scope="module")
def full_mode(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: Any,
    redis_url: str,
    mqtt_url: str,
) -> Iterator[RastroUnderTest]:
    """Rastro in full mode: given addresses for PostgreSQL, Redis and MQTT."""
    from pipeline.ports import free_port
    from pipeline.services.kafka import EmbeddedKafka

    base = tmp_path_factory.mktemp("e2e-full")
    database = postgres_server.create_database("rastro_e2e")
    with EmbeddedKafka(base / "kafka", port=free_port()) as kafka:
        addresses = {
            "postgres": database,
            "redis": redis_url.rsplit("/", 1)[0] + "/7",
            "mqtt": mqtt_url,
            "kafka": kafka.bootstrap_servers,
        }
        with start_rastro(base / "data", addresses) as rastro:
            yield rastro


async def _login(client: httpx.AsyncClient, api: str) -> str:
    response = await client.post(
        f"{api}/api/v1/session", json={"user": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def _register(client: httpx.AsyncClient, api: str, token: str, uid: str) -> None:
    response = await client.post(
        f"{api}/api/v1/devices",
        json={"uniqueId": uid, "name": uid},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code in (200, 201), response.text


def _fix_time(offset_s: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=offset_s)


async def _send_osmand(rastro: RastroUnderTest, uid: str, when: datetime) -> None:
    params = {
        "id": uid,
        "lat": "40.41",
        "lon": "-3.70",
        "timestamp": str(int(when.timestamp())),
        "speed": "10",
        "bearing": "90",
    }
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{rastro.osmand}/", params=params)
    assert response.status_code == 200, response.text


async def _send_json(
    rastro: RastroUnderTest, token: str, uid: str, when: datetime
) -> None:
    body = {
        "uniqueId": uid,
        "time": when.isoformat(),
        "latitude": 40.42,
        "longitude": -3.71,
        "speed": 20.0,
    }
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{rastro.api}/api/v1/positions",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text


async def _send_protobuf_h2(
    rastro: RastroUnderTest, token: str, uid: str, when: datetime
) -> None:
    fix = Fix(
        device=uid,
        fix_time_ms=int(when.timestamp() * 1000),
        latitude=40.43,
        longitude=-3.72,
        valid=True,
        speed_kmh=30.0,
    )
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        response = await client.post(
            f"{rastro.api}/api/v1/positions",
            content=FixBatch(fixes=[fix]).SerializeToString(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/x-protobuf",
            },
        )
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200, response.text


def _send_mqtt(
    rastro: RastroUnderTest, broker_port: int, uid: str, when: datetime
) -> None:
    payload = json.dumps(
        {
            "uniqueId": uid,
            "time": when.isoformat(),
            "latitude": 40.44,
            "longitude": -3.73,
            "speed": 40.0,
        }
    )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    try:
        client.publish(f"gps/madrid/{uid}", payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


async def _latest_until_all(
    client: httpx.AsyncClient,
    rastro: RastroUnderTest,
    expected: dict[str, datetime],
    deadline: float,
) -> dict[str, Any]:
    """Latest positions by device, once every expected device is there (or time is up).

    The job writes Redis in batches (at most 200 ms behind the live feed).
    """
    while True:
        latest = (await client.get(f"{rastro.api}/api/v1/positions/latest")).json()
        by_device = {position["uniqueId"]: position for position in latest}
        if set(expected) <= set(by_device) or time.monotonic() > deadline:
            return by_device
        await asyncio.sleep(0.1)


async def _history_until_found(
    client: httpx.AsyncClient, url: str, params: dict[str, str], deadline: float
) -> list[dict[str, Any]]:
    """A device's history in a window, once it has a row (or time is up).

    History goes through the job's JDBC sink, which flushes every 500 ms: it may
    trail the live feed by that much.
    """
    while True:
        rows: list[dict[str, Any]] = (await client.get(url, params=params)).json()
        if rows or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


async def _await_everywhere(
    rastro: RastroUnderTest, token: str, expected: dict[str, datetime]
) -> None:
    """Every device's fix is in latest, history and the WebSocket within 5 s."""
    headers = {"Authorization": f"Bearer {token}"}
    pushed: set[str] = set()
    ws_url = rastro.api.replace("http", "ws") + "/api/v1/live"
    async with websockets.connect(ws_url, additional_headers=headers) as socket:
        sent_at = time.monotonic()
        await _send_all(rastro, token, expected)
        deadline = sent_at + ARRIVAL_DEADLINE_S + 5.0
        while pushed != set(expected) and time.monotonic() < deadline:
            with_timeout = asyncio.wait_for(socket.recv(), timeout=1.0)
            try:
                message = json.loads(await with_timeout)
            except TimeoutError:
                continue
            if message.get("type") == "position":
                pushed.add(message["position"]["uniqueId"])
    assert pushed == set(expected), rastro.log_tail()

    async with httpx.AsyncClient(headers=headers) as client:
        by_device = await _latest_until_all(client, rastro, expected, deadline)
        for uid, when in expected.items():
            assert by_device[uid]["time"] == format_time_ms(
                int(when.timestamp() * 1000)
            )
        devices = (await client.get(f"{rastro.api}/api/v1/devices")).json()
        for device in devices:
            if device["uniqueId"] not in expected:
                continue
            when = expected[device["uniqueId"]]
            params = {
                "from": (when - timedelta(minutes=1)).isoformat(),
                "to": (when + timedelta(minutes=1)).isoformat(),
            }
            history = await _history_until_found(
                client,
                f"{rastro.api}/api/v1/devices/{device['id']}/positions",
                params,
                deadline,
            )
            assert [row["uniqueId"] for row in history] == [device["uniqueId"]]


async def _send_gt06(rastro: RastroUnderTest, imei: str, when: datetime) -> None:
    """A GT06 tracker logs in and reports; each frame's ack is what it expects."""
    reader, writer = await asyncio.open_connection("127.0.0.1", rastro.gt06_port)
    try:
        writer.write(gt06_login(imei, serial=1))
        assert await reader.readexactly(10) == gt06_ack(0x01, 1)
        writer.write(gt06_location(when, 40.45, -3.74, 50, serial=2))
        assert await reader.readexactly(10) == gt06_ack(0x10, 2)
    finally:
        writer.close()
        await writer.wait_closed()


async def _send_all(
    rastro: RastroUnderTest, token: str, expected: dict[str, datetime]
) -> None:
    osmand, as_json, as_protobuf, over_mqtt, tracker = expected
    await _send_osmand(rastro, osmand, expected[osmand])
    await _send_json(rastro, token, as_json, expected[as_json])
    await _send_protobuf_h2(rastro, token, as_protobuf, expected[as_protobuf])
    await asyncio.to_thread(
        _send_mqtt, rastro, rastro.mqtt_port, over_mqtt, expected[over_mqtt]
    )
    await _send_gt06(rastro, tracker, expected[tracker])


async def _exercise(rastro: RastroUnderTest, prefix: str) -> None:
    expected = {
        f"{prefix}-{way}": _fix_time(10 + index)
        for index, way in enumerate(("osmand", "json", "protobuf", "mqtt"))
    }
    # A tracker's IMEI: 15 digits, unique to this run.
    expected[f"86{time.time_ns() % 10**13:013d}"] = _fix_time(15)
    async with httpx.AsyncClient() as client:
        token = await _login(client, rastro.api)
        for uid in expected:
            await _register(client, rastro.api, token, uid)
    await asyncio.sleep(6)  # ingest's device cache refreshes within 5 s
    await _await_everywhere(rastro, token, expected)


async def test_full_mode_fix_reaches_every_tier(full_mode: RastroUnderTest) -> None:
    await _exercise(full_mode, "full")


async def test_embedded_default_fix_reaches_every_tier(tmp_path: Path) -> None:
    with start_rastro(tmp_path / "data", {}) as rastro:
        await _exercise(rastro, "embedded")
