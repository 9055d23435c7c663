"""Benchmark: time from a device's acknowledgment to the WebSocket push of its fix.

Run against a running Rastro (``./rastro serve`` or ``./rastro demo``)::

    .venv/bin/python -m tests.benchmarks.ack_to_push --api http://127.0.0.1:8080 \\
        --password ADMIN_PASSWORD --fixes 300

It creates a user of its own, registers one device, opens the live WebSocket, then
sends fixes one at a time over ``POST /api/v1/positions`` and records, for each, the
time from the 200 response (Kafka acknowledged) to the moment the same fix arrives on
the WebSocket.  It prints the median and the 99th percentile, and the mean payload
size of the fixes as JSON and as Protocol Buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta

import httpx
import websockets

from pipeline.model import fix_from_json


async def measure(api: str, password: str, fixes: int) -> dict[str, float]:
    """Send ``fixes`` fixes and return latency percentiles in milliseconds."""
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        admin = await _log_in(client, "admin", password)
        # A user of its own: its WebSocket carries only the benchmark's device, not
        # the whole fleet (a demo's vehicles would crowd its queue).
        user, secret = f"bench-{int(time.time())}", secrets.token_urlsafe(16)
        created = await client.post(
            "/api/v1/users", json={"name": user, "password": secret}, headers=admin
        )
        created.raise_for_status()
        headers = await _log_in(client, user, secret)
        device = f"bench-{int(time.time())}"
        await client.post(
            "/api/v1/devices",
            json={"uniqueId": device, "name": device},
            headers=headers,
        )
        await asyncio.sleep(6)  # ingest's device cache
        return await _round_trips(client, api, headers, device, fixes)


async def _log_in(
    client: httpx.AsyncClient, user: str, password: str
) -> dict[str, str]:
    login = await client.post(
        "/api/v1/session", json={"user": user, "password": password}
    )
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['token']}"}


async def _round_trips(
    client: httpx.AsyncClient,
    api: str,
    headers: dict[str, str],
    device: str,
    fixes: int,
) -> dict[str, float]:
    latencies: list[float] = []
    json_sizes: list[int] = []
    proto_sizes: list[int] = []
    # Whole seconds: the pushed fix carries milliseconds, not microseconds.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    ws_url = api.replace("http", "ws", 1) + "/api/v1/live"
    async with websockets.connect(ws_url, additional_headers=headers) as socket:
        for index in range(fixes):
            body = {
                "uniqueId": device,
                "time": (start + timedelta(seconds=index)).isoformat(),
                "latitude": 40.4 + index * 1e-4,
                "longitude": -3.7,
                "speed": 30.0,
                "course": 90.0,
                "altitude": 650.0,
                "accuracy": 5.0,
                "attributes": {"ignition": True, "battery": 87},
            }
            json_sizes.append(len(json.dumps(body)))
            fix = fix_from_json(body, server_time_ms=0)
            proto_sizes.append(len(fix.SerializeToString()))
            response = await client.post(
                "/api/v1/positions", json=body, headers=headers
            )
            acked = time.perf_counter()
            response.raise_for_status()
            await _until_pushed(socket, str(body["time"]))
            latencies.append((time.perf_counter() - acked) * 1000)

    latencies.sort()
    return {
        "fixes": fixes,
        "median_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "json_bytes": statistics.mean(json_sizes),
        "protobuf_bytes": statistics.mean(proto_sizes),
    }


async def _until_pushed(socket: websockets.ClientConnection, fix_time: str) -> None:
    wanted = datetime.fromisoformat(fix_time)
    async with asyncio.timeout(30):
        await _first_push_at(socket, wanted)


async def _first_push_at(socket: websockets.ClientConnection, wanted: datetime) -> None:
    while True:
        message = json.loads(await socket.recv())
        position = message.get("position", {})
        if position and datetime.fromisoformat(position["time"]) == wanted:
            return


def main() -> None:
    """Parse arguments, run, print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--password", required=True)
    parser.add_argument("--fixes", type=int, default=300)
    arguments = parser.parse_args()
    figures = asyncio.run(measure(arguments.api, arguments.password, arguments.fixes))
    for name, value in figures.items():
        print(f"{name}: {value:.1f}")


if __name__ == "__main__":
    main()
