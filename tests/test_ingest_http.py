"""``POST /api/v1/positions``: JSON and protobuf uploads into real Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.ingest.http import ingest_positions
from pipeline.ingest.payloads import encode_batch
from pipeline.ingest.service import IngestService
from pipeline.kafka import FIX_TIME_HEADER
from pipeline.model import Fix
from pipeline.services.kafka import EmbeddedKafka
from tests.fixtures.ingest import MakeIngest, reset_rate_bucket
from tests.fixtures.kafka import read_messages, read_topic

pytestmark = pytest.mark.integration

PATH = "/api/v1/positions"


def _app(
    ingest: IngestService,
    may_report: Callable[[str], Awaitable[bool]] | None = None,
    **limits: int,
) -> Starlette:
    """What the API does: authenticate (here: nobody), then hand over."""
    allowed = may_report or ingest.known_device

    async def positions(request: Request) -> Response:
        return await ingest_positions(request, ingest, allowed, **limits)

    return Starlette(routes=[Route(PATH, positions, methods=["POST"])])


def _client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://api")


def _position(
    device: str = "dev-1", second: int = 0, **fields: object
) -> dict[str, object]:
    return {
        "uniqueId": device,
        "time": f"2025-05-09T04:11:{second:02d}Z",
        "latitude": 48.137,
        "longitude": 11.575,
        **fields,
    }


class TestPositionsUpload:
    async def test_upload_json_batch_is_acked_and_published(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        body = [_position("dev-1", 1, speed=30), _position("dev-2", 2)]

        async with _client(_app(ingest)) as client:
            response = await client.post(PATH, json=body)

        assert response.status_code == 200
        assert response.json() == {"accepted": 2}
        records = read_topic(kafka_bootstrap, ingest_topic, 2)
        fixes = {key: Fix.FromString(value) for key, value in records}
        assert set(fixes) == {b"dev-1", b"dev-2"}
        assert fixes[b"dev-1"].speed_kmh == pytest.approx(30.0)
        assert fixes[b"dev-1"].protocol == "json"
        assert ingest.accepted == 2

    async def test_records_carry_fix_time_never_ahead(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        """The fix-time header carries the fix time (the job's watermark follows
        it); a fix from a clock running a day ahead carries its arrival.  The
        Kafka time is the arrival for both, so that time-based retention never
        deletes a fix of long ago (this one is from 2025) soon after it came."""
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        ahead = datetime.now(UTC) + timedelta(days=1)
        body = [
            _position("dev-1", 7),
            _position("dev-2", time=ahead.isoformat().replace("+00:00", "Z")),
        ]

        async with _client(_app(ingest)) as client:
            before_ms = time.time_ns() // 1_000_000
            response = await client.post(PATH, json=body)
            after_ms = time.time_ns() // 1_000_000

        assert response.json() == {"accepted": 2}
        messages = read_messages(kafka_bootstrap, ingest_topic, 2)
        carried = {
            message.key(): int(dict(message.headers() or [])[FIX_TIME_HEADER])
            for message in messages
        }
        on_time = datetime(2025, 5, 9, 4, 11, 7, tzinfo=UTC).timestamp() * 1000
        assert carried[b"dev-1"] == on_time
        assert before_ms <= carried[b"dev-2"] <= after_ms
        for message in messages:
            assert before_ms <= message.timestamp()[1] <= after_ms

    async def test_upload_protobuf_batch_is_published(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        fixes = [
            Fix(device="dev-1", fix_time_ms=1000 * n, latitude=1.0, longitude=2.0)
            for n in range(1, 4)
        ]

        async with _client(_app(ingest)) as client:
            response = await client.post(
                PATH,
                content=encode_batch(fixes),
                headers={"content-type": "application/x-protobuf"},
            )

        assert response.json() == {"accepted": 3}
        published = [
            Fix.FromString(v) for _, v in read_topic(kafka_bootstrap, ingest_topic, 3)
        ]
        assert sorted(fix.fix_time_ms for fix in published) == [1000, 2000, 3000]
        assert {fix.protocol for fix in published} == {"protobuf"}

    async def test_upload_bad_records_are_400_and_good_ones_published(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        body = [
            _position("dev-1", 1),
            _position("dev-1", 2, longitude="east"),
            _position("stranger", 3),
            _position("dev-2", 4),
        ]

        async with _client(_app(ingest)) as client:
            response = await client.post(PATH, json=body)

        assert response.status_code == 400
        document = response.json()
        assert document["accepted"] == 2
        assert [entry["index"] for entry in document["rejected"]] == [1, 2]
        assert "longitude must be a number" in document["rejected"][0]["reason"]
        assert "'stranger' is unknown" in document["rejected"][1]["reason"]
        keys = sorted(key for key, _ in read_topic(kafka_bootstrap, ingest_topic, 2))
        assert keys == [b"dev-1", b"dev-2"]
        assert ingest.rejected["malformed"] == 1
        assert ingest.rejected["unknown_device"] == 1

    async def test_upload_undecodable_bodies_name_the_problem(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        app = _app(ingest, max_records=5, max_bytes=2000)
        protobuf = {"content-type": "application/x-protobuf"}

        async with _client(app) as client:
            bad_json = await client.post(
                PATH,
                content=b'[{"uniqueId": ',
                headers={"content-type": "application/json"},
            )
            bad_protobuf = await client.post(
                PATH, content=b"\x0a\x50ab", headers=protobuf
            )
            csv = await client.post(
                PATH, content=b"a,b", headers={"content-type": "text/csv"}
            )
            many = await client.post(PATH, json=[_position()] * 6)
            big = await client.post(
                PATH, json=[_position(attributes={"x": "y" * 3000})]
            )

        assert bad_json.status_code == 400
        assert "not valid JSON" in bad_json.json()["error"]
        assert bad_protobuf.status_code == 400
        assert "not Protocol Buffers" in bad_protobuf.json()["error"]
        assert csv.status_code == 415
        assert many.status_code == 413 and "6 records" in many.json()["error"]
        assert big.status_code == 413

    async def test_upload_101st_message_in_a_second_is_429(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        redis_url: str,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic, redis_url=redis_url)
        await reset_rate_bucket(redis_url, "dev-1")
        body = [{**_position("dev-1"), "time": None} for _ in range(101)]

        async with _client(_app(ingest)) as client:
            response = await client.post(PATH, json=body)

        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        document = response.json()
        assert document["accepted"] == 100
        assert [entry["index"] for entry in document["rejected"]] == [100]
        assert (
            "over its rate of 100 messages per second"
            in document["rejected"][0]["reason"]
        )
        assert ingest.limiter is not None and ingest.limiter.limited == 1

    async def test_upload_kafka_down_is_503_then_accepted(
        self, make_ingest: MakeIngest, outage_broker: EmbeddedKafka
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        ingest = await make_ingest(bootstrap, "positions-http", delivery_timeout_s=2)
        body = [_position("dev-1", second) for second in range(10)]

        async with _client(_app(ingest)) as client:
            await asyncio.to_thread(outage_broker.stop)
            down = await client.post(PATH, json=body)
            await asyncio.to_thread(outage_broker.start)
            again = await _retry_until_ok(client, body)

        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"
        assert "Kafka" in down.json()["error"]
        assert again.json() == {"accepted": 10}
        records = read_topic(bootstrap, "positions-http", 10)
        seconds = {Fix.FromString(value).fix_time_ms % 60_000 for _, value in records}
        assert seconds == {1000 * second for second in range(10)}
        assert ingest.kafka_failures >= 1


async def _retry_until_ok(client: httpx.AsyncClient, body: object) -> httpx.Response:
    """What a client does after a 503: retry until it is taken."""
    for _ in range(30):
        response = await client.post(PATH, json=body)
        if response.status_code == 200:
            return response
        await asyncio.sleep(1)
    return response
