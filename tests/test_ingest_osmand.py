"""The OsmAnd protocol: decoding Traccar's samples, and the port's answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import structlog

from pipeline.ingest.osmand import (
    KNOTS_TO_KMH,
    OsmandError,
    create_osmand_app,
    fix_from_osmand_params,
    fixes_from_osmand_json,
    osmand_time_ms,
    serve_osmand,
)
from pipeline.model import Fix, parse_time_ms
from pipeline.ports import free_port
from pipeline.services.kafka import EmbeddedKafka
from tests.fixtures.ingest import MakeIngest, reset_rate_bucket
from tests.fixtures.kafka import read_topic

SAMPLES_FILE = Path(__file__).parent / "data" / "ingest_osmand_samples.json"
SAMPLES = {s["id"]: s for s in json.loads(SAMPLES_FILE.read_text())["samples"]}
NOW_MS = 1_760_000_000_000


def _query(sample_id: str) -> dict[str, str]:
    target = SAMPLES[sample_id]["payload_text"]
    return dict(parse_qsl(urlsplit(target).query))


def _assert_expected(fix: Fix, expected: dict[str, Any]) -> None:
    assert fix.device == expected["imei"]
    assert fix.latitude == pytest.approx(expected["latitude"], abs=1e-6)
    assert fix.longitude == pytest.approx(expected["longitude"], abs=1e-6)
    assert fix.valid is expected["valid"]
    if "time" in expected:
        assert fix.fix_time_ms == parse_time_ms(expected["time"])
    if "speed_kmh" in expected:
        assert fix.speed_kmh == pytest.approx(expected["speed_kmh"], abs=1e-3)
    if "course" in expected:
        assert fix.course == pytest.approx(expected["course"])
    if "altitude" in expected:
        assert fix.altitude == pytest.approx(expected["altitude"], abs=1e-3)
    if "battery_level" in expected:
        assert json.loads(fix.attributes["batteryLevel"]) == expected["battery_level"]


class TestOsmandParams:
    @pytest.mark.parametrize(
        "sample_id", ["osmand-query-batt", "osmand-query-deviceid"]
    )
    def test_params_sample_decodes_to_expected(self, sample_id: str) -> None:
        fix = fix_from_osmand_params(_query(sample_id), server_time_ms=NOW_MS)

        _assert_expected(fix, SAMPLES[sample_id]["expected"])
        assert fix.fix_time_ms == NOW_MS  # the samples carry no timestamp
        assert fix.protocol == "osmand"

    def test_params_speed_in_knots_becomes_kmh(self) -> None:
        params = {"id": "d", "lat": "1", "lon": "2", "speed": "10"}

        fix = fix_from_osmand_params(params, server_time_ms=NOW_MS)

        assert fix.speed_kmh == pytest.approx(10 * KNOTS_TO_KMH)

    def test_params_other_keys_become_attributes(self) -> None:
        params = {"id": "d", "location": "1.5,2.5", "hdop": "0.9", "charge": "true"}
        params |= {"cell": "250,1,2,3", "sat": "7"}

        fix = fix_from_osmand_params(params, server_time_ms=NOW_MS)

        assert (fix.latitude, fix.longitude) == (1.5, 2.5)
        attributes = {key: json.loads(value) for key, value in fix.attributes.items()}
        assert attributes == {
            "hdop": 0.9,
            "charge": True,
            "cell": "250,1,2,3",
            "sat": 7,
        }

    def test_params_without_id_is_refused(self) -> None:
        with pytest.raises(OsmandError, match=r"id \(or deviceid\) is required"):
            fix_from_osmand_params({"lat": "1", "lon": "2"}, server_time_ms=NOW_MS)

    def test_params_bad_latitude_is_refused(self) -> None:
        params = {"id": "d", "lat": "north", "lon": "2"}

        with pytest.raises(OsmandError, match="lat must be a number, got 'north'"):
            fix_from_osmand_params(params, server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("1609459200", 1_609_459_200_000),
            ("1609459200123", 1_609_459_200_123),
            ("2021-01-01T00:00:00Z", 1_609_459_200_000),
            ("2021-01-01 00:00:00", 1_609_459_200_000),
        ],
    )
    def test_params_timestamp_forms(self, text: str, expected: int) -> None:
        assert osmand_time_ms(text) == expected

    def test_params_bad_timestamp_is_refused(self) -> None:
        with pytest.raises(OsmandError, match="timestamp must be Unix seconds"):
            osmand_time_ms("yesterday")


class TestOsmandJson:
    def test_json_sample_decodes_to_expected(self) -> None:
        sample = SAMPLES["osmand-json-unknown-speed"]

        [fix] = fixes_from_osmand_json(
            json.loads(sample["payload_text"]), server_time_ms=NOW_MS
        )

        _assert_expected(fix, sample["expected"])
        assert not fix.HasField("speed_kmh")  # -1 means unknown
        assert not fix.HasField("course")
        assert "batteryLevel" not in fix.attributes
        assert json.loads(fix.attributes["event"]) == "motionchange"
        assert json.loads(fix.attributes["motion"]) is False

    def test_json_speed_in_mps_becomes_kmh(self) -> None:
        document = {
            "device_id": "d",
            "location": {
                "timestamp": "2025-05-09T04:11:30Z",
                "coords": {"latitude": 1, "longitude": 2, "speed": 10, "heading": 45},
                "battery": {"level": 0.55, "is_charging": True},
            },
        }

        [fix] = fixes_from_osmand_json(document, server_time_ms=NOW_MS)

        assert fix.speed_kmh == pytest.approx(36.0)
        assert fix.course == pytest.approx(45.0)
        assert json.loads(fix.attributes["batteryLevel"]) == 55.0
        assert json.loads(fix.attributes["charge"]) is True

    def test_json_without_coords_is_refused(self) -> None:
        document = {"device_id": "d", "location": {"timestamp": "2025-05-09T04:11Z"}}

        with pytest.raises(OsmandError, match=r"location\.coords must be an object"):
            fixes_from_osmand_json(document, server_time_ms=NOW_MS)


# -- the port, against real Kafka and PostgreSQL ------------------------------------


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://osmand")


def _decoded(records: list[tuple[bytes, bytes]]) -> list[Fix]:
    return [Fix.FromString(value) for _, value in records]


@pytest.mark.integration
class TestOsmandApp:
    async def test_app_get_sample_reaches_kafka(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        sample = SAMPLES["osmand-query-batt"]

        async with _client(create_osmand_app(ingest)) as client:
            response = await client.get(sample["payload_text"])

        assert response.status_code == sample["expected"]["http_status"]
        assert response.content == b""
        [(key, value)] = read_topic(kafka_bootstrap, ingest_topic, 1)
        assert key == b"861001000719969"
        _assert_expected(Fix.FromString(value), sample["expected"])

    async def test_app_post_form_and_json_reach_kafka(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        form = urlsplit(SAMPLES["osmand-query-deviceid"]["payload_text"]).query
        sample = SAMPLES["osmand-json-unknown-speed"]

        async with _client(create_osmand_app(ingest)) as client:
            by_form = await client.post(
                "/",
                content=form,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            by_json = await client.post(
                "/",
                content=sample["payload_text"],
                headers={"content-type": "application/json"},
            )

        assert (by_form.status_code, by_json.status_code) == (200, 200)
        fixes = _decoded(read_topic(kafka_bootstrap, ingest_topic, 2))
        by_device = {fix.device: fix for fix in fixes}
        _assert_expected(
            by_device["123456"], SAMPLES["osmand-query-deviceid"]["expected"]
        )
        _assert_expected(by_device["658765"], sample["expected"])

    async def test_app_unknown_device_is_refused_and_logged_once(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        document = json.loads(SAMPLES["osmand-json-unknown-speed"]["payload_text"])
        document["device_id"] = "stranger-json"

        with structlog.testing.capture_logs() as logs:
            async with _client(create_osmand_app(ingest)) as client:
                queries = [
                    await client.get("/?id=stranger&lat=1&lon=2") for _ in range(3)
                ]
                by_json = await client.post("/", json=document)

        assert [response.status_code for response in queries] == [400, 400, 400]
        assert by_json.status_code == 404
        unknown = [entry for entry in logs if entry["event"] == "osmand_unknown_device"]
        assert [entry["device"] for entry in unknown] == ["stranger", "stranger-json"]

    async def test_app_malformed_request_is_400_with_reason(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)

        async with _client(create_osmand_app(ingest)) as client:
            no_position = await client.get("/?id=123456")
            bad_json = await client.post(
                "/", content=b"{", headers={"content-type": "application/json"}
            )

        assert no_position.status_code == 400
        assert "lat and lon (or location) are required" in no_position.text
        assert bad_json.status_code == 400 and "not valid JSON" in bad_json.text

    async def test_app_device_over_rate_gets_429(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        redis_url: str,
    ) -> None:
        ingest = await make_ingest(
            kafka_bootstrap, ingest_topic, redis_url=redis_url, rate=1
        )
        await reset_rate_bucket(redis_url, "dev-2")

        async with _client(create_osmand_app(ingest)) as client:
            first = await client.get("/?id=dev-2&lat=1&lon=2")
            second = await client.get("/?id=dev-2&lat=1&lon=2")

        assert (first.status_code, second.status_code) == (200, 429)
        assert ingest.rejected["rate_limited"] == 1

    async def test_app_kafka_down_is_503_then_delivered(
        self, make_ingest: MakeIngest, outage_broker: EmbeddedKafka, ingest_topic: str
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        ingest = await make_ingest(bootstrap, "positions-osmand", delivery_timeout_s=2)

        async with _client(create_osmand_app(ingest)) as client:
            assert (
                await client.get("/?id=dev-1&lat=1&lon=2&timestamp=1")
            ).status_code == 200
            await asyncio.to_thread(outage_broker.stop)
            down = await client.get("/?id=dev-1&lat=3&lon=4&timestamp=2")
            await asyncio.to_thread(outage_broker.start)
            again = await _retry_until_ok(client, "/?id=dev-1&lat=3&lon=4&timestamp=2")

        assert down.status_code == 503 and down.headers["retry-after"] == "5"
        assert again.status_code == 200
        times = {
            fix.fix_time_ms
            for fix in _decoded(
                read_topic(bootstrap, "positions-osmand", 99, timeout_s=5)
            )
        }
        assert {1000, 2000} <= times

    async def test_app_serves_on_its_own_port(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        port, stopping = free_port(), asyncio.Event()
        server = asyncio.create_task(
            serve_osmand(create_osmand_app(ingest), "127.0.0.1", port, stopping)
        )

        try:
            response = await _get_when_listening(
                f"http://127.0.0.1:{port}/?id=dev-1&lat=1&lon=2"
            )
        finally:
            stopping.set()
            await server

        assert response.status_code == 200
        assert read_topic(kafka_bootstrap, ingest_topic, 1)[0][0] == b"dev-1"


async def _retry_until_ok(client: httpx.AsyncClient, target: str) -> httpx.Response:
    """What a Traccar Client does after a 503: try again until it is taken."""
    for _ in range(30):
        response = await client.get(target)
        if response.status_code == 200:
            return response
        await asyncio.sleep(1)
    return response


async def _get_when_listening(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        for _ in range(50):
            try:
                return await client.get(url)
            except httpx.ConnectError:
                await asyncio.sleep(0.1)
        return await client.get(url)
