"""OwnTracks: the booklet's sample messages, the HTTP port and the MQTT bridge.

The samples in ``tests/data/ingest_owntracks_samples.json`` are copied from the
OwnTracks booklet (each names its file and lines); the port and the bridge run
against the real Kafka, PostgreSQL and Mosquitto of the fixtures.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as paho
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.ingest.owntracks import (
    OwnTracksError,
    OwnTracksMessage,
    create_owntracks_app,
    decode_owntracks,
    device_from_topic,
    owntracks_bridge,
    serve_owntracks,
)
from pipeline.kafka import ensure_topics
from pipeline.model import Event, Fix
from pipeline.ports import free_port
from pipeline.services.kafka import EmbeddedKafka
from tests.fixtures.ingest import MakeIngest, register_device
from tests.fixtures.kafka import read_topic

SAMPLES_FILE = Path(__file__).parent / "data" / "ingest_owntracks_samples.json"
SAMPLES = {s["id"]: s for s in json.loads(SAMPLES_FILE.read_text())["samples"]}
NOW_MS = 1_760_000_000_000
DECODED_KINDS = ("location", "transition")


def _attributes(record: Fix | Event) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in record.attributes.items()}


def _assert_expected(message: OwnTracksMessage, expected: dict[str, Any]) -> None:
    assert message.kind == expected["kind"]
    record: Fix | Event
    if expected["kind"] == "location":
        [record] = message.fixes
        assert message.events == []
        assert record.fix_time_ms == expected["time_ms"]
        assert record.protocol == "owntracks" and record.valid
        for name in ("speed_kmh", "course", "altitude", "accuracy"):
            if name in expected:
                assert getattr(record, name) == pytest.approx(expected[name])
    else:
        [record] = message.events
        assert message.fixes == []
        assert record.type == expected["type"]
        assert record.event_time_ms == expected["time_ms"]
    assert record.latitude == pytest.approx(expected["latitude"], abs=1e-9)
    assert record.longitude == pytest.approx(expected["longitude"], abs=1e-9)
    assert _attributes(record) == expected["attributes"]


def _location(**fields: Any) -> dict[str, Any]:
    return {
        "_type": "location",
        "lat": 48.1,
        "lon": 11.5,
        "tst": 1_700_000_000,
    } | fields


class TestDecodeOwnTracks:
    @pytest.mark.parametrize(
        "sample_id",
        [i for i, s in SAMPLES.items() if s["expected"]["kind"] in DECODED_KINDS],
    )
    def test_decode_booklet_sample(self, sample_id: str) -> None:
        sample = SAMPLES[sample_id]
        expected = sample["expected"]
        # The MQTT topic names the device, else the body's topic, else a default.
        device = device_from_topic(sample["topic"]) if "topic" in sample else None
        if "device" not in expected:
            device = "jane/phone"

        message = decode_owntracks(
            sample["payload_text"].encode(), server_time_ms=NOW_MS, device=device
        )

        _assert_expected(message, expected)
        assert message.device == expected.get("device", device)

    @pytest.mark.parametrize("sample_id", ["waypoints-waypoint", "card", "encrypted"])
    def test_decode_other_types_are_ignored(self, sample_id: str) -> None:
        payload = SAMPLES[sample_id]["payload_text"]

        message = decode_owntracks(payload, server_time_ms=NOW_MS)

        assert message == OwnTracksMessage(SAMPLES[sample_id]["expected"]["kind"])

    @pytest.mark.parametrize("payload", [b"", b" \n", '{"_type": "lwt", "tst": 1}'])
    def test_decode_empty_body_and_lwt_are_ignored(self, payload: bytes | str) -> None:
        message = decode_owntracks(payload, server_time_ms=NOW_MS)

        assert message.fixes == [] and message.events == []
        assert message.device is None

    def test_decode_body_topic_names_device_unless_given(self) -> None:
        payload = SAMPLES["traccar-http-location-topic"]["payload_text"]

        from_topic = decode_owntracks(payload, server_time_ms=NOW_MS)
        given_device = decode_owntracks(payload, server_time_ms=NOW_MS, device="a/b")

        assert [fix.device for fix in from_topic.fixes] == ["jane/iphone"]
        assert [fix.device for fix in given_device.fixes] == ["a/b"]
        assert from_topic.fixes[0].server_time_ms == NOW_MS

    def test_decode_without_device_is_refused(self) -> None:
        payload = SAMPLES["traccar-http-location-tid-only"]["payload_text"]

        with pytest.raises(OwnTracksError, match="the device is not named: send the"):
            decode_owntracks(payload, server_time_ms=NOW_MS)

    def test_decode_leave_is_geofence_exit_without_position(self) -> None:
        document = {"_type": "transition", "event": "leave", "tst": 1_700_000_000}
        document |= {"desc": "Home", "t": "b", "acc": -1}

        message = decode_owntracks(json.dumps(document), server_time_ms=0, device="u/d")

        [event] = message.events
        assert event.type == "geofenceExit" and event.device == "u/d"
        assert not event.HasField("latitude") and not event.HasField("longitude")
        assert _attributes(event) == {
            "protocol": "owntracks",
            "name": "Home",
            "trigger": "beacon",
        }

    def test_decode_location_elements_become_attributes(self) -> None:
        document = _location(
            bs=2, m=2, inregions=["Home", "Garage"], inrids=["6da9cf"], vel=-1
        )
        document |= {"BSSID": "b0:b9:8a:0d:1e:2f", "poi": "Café", "image": "iVBO"}
        document |= {"odometer": 12.5, "ign": True, "ubatt": 4.1, "custom": 7}
        document |= {"topic": "owntracks/x/y", "_id": "7f", "extra": {"a": 1}}

        [fix] = decode_owntracks(
            json.dumps(document), server_time_ms=0, device="u/d"
        ).fixes

        assert not fix.HasField("speed_kmh")  # -1: not known
        assert _attributes(fix) == {
            "batteryStatus": "charging",
            "charge": True,
            "monitoringMode": "move",
            "inregions": ["Home", "Garage"],
            "inrids": ["6da9cf"],
            "bssid": "b0:b9:8a:0d:1e:2f",
            "poi": "Café",
            "odometer": 12500.0,
            "ignition": True,
            "battery": 4.1,
            "custom": 7,
        }

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            ('{"_type": "location", "lon": 2, "tst": 1}', "lat is required"),
            (_location(lat=91), "lat must be between -90 and 90, got 91.0"),
            (_location(tst=None), r"tst \(Unix seconds\) is required"),
            (_location(tst=1_707_057_574_000), "tst must be Unix seconds after 1970"),
            (_location(vel="fast"), "vel must be a number, got 'fast'"),
            (_location(lon=float("nan")), "lon must be finite"),
            (_location(bs=1.5), "bs must be a whole number, got 1.5"),
            (_location(inregions=[1]), "inregions must be a list of strings"),
            (_location(conn=1), "conn must be a string, got 1"),
            ('{"_type": 5}', "_type must be a non-empty string, got 5"),
            ("[1, 2]", "message must be a JSON object, got list"),
            ('{"lat": ', r"message is not valid JSON: Expecting value \(line 1"),
            (b"\xff\xfe{", "message is not UTF-8 text"),
            ('{"_type": "transition", "tst": 1}', "event must be 'enter' or 'leave'"),
            (
                '{"_type": "transition", "event": "enter", "tst": 1, "lat": 1}',
                "lon is required",
            ),
        ],
    )
    def test_decode_malformed_is_refused_with_reason(
        self, payload: str | bytes | dict[str, Any], reason: str
    ) -> None:
        if isinstance(payload, dict):
            payload = json.dumps({k: v for k, v in payload.items() if v is not None})

        with pytest.raises(OwnTracksError, match=reason):
            decode_owntracks(payload, server_time_ms=NOW_MS, device="u/d")

    def test_device_from_topic_takes_user_and_device(self) -> None:
        assert device_from_topic("owntracks/jane/phone/event") == "jane/phone"

        with pytest.raises(OwnTracksError, match=r"topic must be \{base\}/\{user\}/"):
            device_from_topic("owntracks/jane")


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    "_type lat lon tst vel cog alt acc vac batt bs conn t m event desc rid wtst "
    "topic inregions p".split()
)
_MESSAGES = st.fixed_dictionaries(
    {"_type": st.sampled_from(["location", "transition", "lwt", ""]) | _JSON_SCALARS},
    optional={"lat": st.floats(-100, 100), "lon": st.floats(-200, 200)},
).flatmap(
    lambda base: st.dictionaries(_KEYS, _JSON_VALUES, max_size=8).map(
        lambda extra: base | extra
    )
)


class TestDecodeOwnTracksProperties:
    @settings(max_examples=400, deadline=None)
    @given(document=_MESSAGES)
    def test_decode_json_objects_only_raise_its_own_error(
        self, document: dict[str, Any]
    ) -> None:
        text = json.dumps(document)

        try:
            message = decode_owntracks(text, server_time_ms=NOW_MS, device="u/d")
        except OwnTracksError:
            return
        for fix in message.fixes:
            assert -90 <= fix.latitude <= 90 and -180 <= fix.longitude <= 180
            assert fix.fix_time_ms > 0 and fix.device == "u/d"
            assert all(
                json.loads(value) is not None for value in fix.attributes.values()
            )
        assert all(event.type.startswith("geofence") for event in message.events)

    @settings(max_examples=300, deadline=None)
    @given(payload=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
    def test_decode_any_bytes_only_raise_its_own_error(self, payload: bytes) -> None:
        try:
            decode_owntracks(payload, server_time_ms=NOW_MS)
        except OwnTracksError as error:
            assert str(error)


# -- the HTTP port and the MQTT bridge, against real Kafka, PostgreSQL, Mosquitto ---


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://owntracks")


def _headers(user: str, device: str) -> dict[str, str]:
    return {"content-type": "application/json", "X-Limit-U": user, "X-Limit-D": device}


def _fixes(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30
) -> list[Fix]:
    records = read_topic(bootstrap, topic, expected, timeout_s=timeout_s)
    return [Fix.FromString(value) for _, value in records]


def _events(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30
) -> list[tuple[bytes, Event]]:
    records = read_topic(bootstrap, topic, expected, timeout_s=timeout_s)
    return [(key, Event.FromString(value)) for key, value in records]


@pytest.fixture
async def owntracks_devices(device_pool: asyncpg.Pool) -> tuple[str, ...]:
    """Registers the booklet's phones as ``{user}/{device}``."""
    devices = ("jane/phone", "jane/nokia", "jane/iphone")
    for device in devices:
        await register_device(device_pool, device)
    return devices


@pytest.mark.integration
@pytest.mark.usefixtures("owntracks_devices")
class TestOwnTracksHttp:
    async def test_http_location_reaches_kafka(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        sample = SAMPLES["traccar-http-location-topic"]

        async with _client(create_owntracks_app(ingest)) as client:
            response = await client.post(
                "/pub",
                content=sample["payload_text"],
                headers=_headers("jane", "phone"),
            )

        assert response.status_code == 200
        assert response.content == b"[]"
        assert response.headers["content-type"] == "application/json"
        [(key, value)] = read_topic(kafka_bootstrap, ingest_topic, 1)
        fix = Fix.FromString(value)
        assert key == b"jane/phone" and fix.device == "jane/phone"  # headers first
        _assert_expected(OwnTracksMessage("location", fixes=[fix]), sample["expected"])

    async def test_http_device_from_query_or_body_topic(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        by_query = SAMPLES["quicksetup-mqtt-location"]["payload_text"]
        by_topic = SAMPLES["traccar-http-location-topic"]["payload_text"]

        async with _client(create_owntracks_app(ingest)) as client:
            first = await client.post("/?u=jane&d=nokia", content=by_query)
            second = await client.post("/", content=by_topic)

        assert (first.status_code, second.status_code) == (200, 200)
        fixes = _fixes(kafka_bootstrap, ingest_topic, 2)
        assert sorted(fix.device for fix in fixes) == ["jane/iphone", "jane/nokia"]

    async def test_http_transition_becomes_event(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        kafka_topic: Callable[..., str],
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        events_topic = kafka_topic(partitions=3)
        sample = SAMPLES["waypoints-transition-enter"]
        app = create_owntracks_app(ingest, events_topic=events_topic)

        async with _client(app) as client:
            response = await client.post(
                "/", content=sample["payload_text"], headers=_headers("jane", "phone")
            )

        assert (response.status_code, response.content) == (200, b"[]")
        [(key, event)] = _events(kafka_bootstrap, events_topic, 1)
        assert key == b"jane/phone" and event.device == "jane/phone"
        _assert_expected(
            OwnTracksMessage("transition", events=[event]), sample["expected"]
        )
        assert read_topic(kafka_bootstrap, ingest_topic, 1, timeout_s=1) == []

    async def test_http_other_types_answer_empty_array(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        kafka_topic: Callable[..., str],
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        events_topic = kafka_topic()
        app = create_owntracks_app(ingest, events_topic=events_topic)
        bodies = [SAMPLES[i]["payload_text"] for i in ("waypoints-waypoint", "card")]
        bodies += [SAMPLES["encrypted"]["payload_text"]] * 2 + ['{"_type":"lwt"}', ""]

        with structlog.testing.capture_logs() as logs:
            async with _client(app) as client:
                responses = [
                    await client.post("/", content=body, headers=_headers("jane", "x"))
                    for body in bodies
                ]

        assert [(r.status_code, r.content) for r in responses] == [(200, b"[]")] * 6
        assert read_topic(kafka_bootstrap, ingest_topic, 1, timeout_s=1) == []
        assert read_topic(kafka_bootstrap, events_topic, 1, timeout_s=1) == []
        encrypted = [e for e in logs if e["event"] == "owntracks_encrypted_ignored"]
        assert [entry["device"] for entry in encrypted] == ["jane/x"]

    async def test_http_unknown_device_is_403_and_logged_once(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        location = SAMPLES["quicksetup-mqtt-location"]["payload_text"]
        transition = SAMPLES["beacons-transition-enter"]["payload_text"]

        with structlog.testing.capture_logs() as logs:
            async with _client(create_owntracks_app(ingest)) as client:
                responses = [
                    await client.post("/", content=body, headers=_headers("eve", "x"))
                    for body in (location, location, transition)
                ]

        assert [response.status_code for response in responses] == [403, 403, 403]
        assert (
            responses[0].text == "device 'eve/x' is unknown or not yours to report for"
        )
        unknown = [e for e in logs if e["event"] == "owntracks_unknown_device"]
        assert [entry["device"] for entry in unknown] == ["eve/x"]
        assert read_topic(kafka_bootstrap, ingest_topic, 1, timeout_s=1) == []

    async def test_http_malformed_or_unnamed_is_400_with_reason(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        unnamed = SAMPLES["traccar-http-location-tid-only"]["payload_text"]

        async with _client(create_owntracks_app(ingest)) as client:
            no_device = await client.post("/", content=unnamed)
            no_latitude = await client.post(
                "/",
                content='{"_type":"location","lon":2,"tst":1700000000}',
                headers=_headers("jane", "phone"),
            )
            too_large = await client.post(
                "/", content=b" " * (300 * 1024), headers=_headers("jane", "phone")
            )
            by_get = await client.get("/?u=jane&d=phone")

        assert no_device.status_code == 400
        assert no_device.text.startswith("the device is not named: send the X-Limit-U")
        assert (no_latitude.status_code, no_latitude.text) == (400, "lat is required")
        assert too_large.status_code == 413
        assert by_get.status_code == 405
        assert read_topic(kafka_bootstrap, ingest_topic, 1, timeout_s=1) == []

    async def test_http_kafka_down_is_503_then_delivered(
        self, make_ingest: MakeIngest, outage_broker: EmbeddedKafka
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        suffix = uuid.uuid4().hex[:6]
        topic, events_topic = f"positions-ot-{suffix}", f"events-ot-{suffix}"
        ingest = await make_ingest(bootstrap, topic, delivery_timeout_s=2)
        await asyncio.to_thread(ensure_topics, bootstrap, {events_topic: 3})
        app = create_owntracks_app(ingest, events_topic=events_topic)
        location = json.dumps(_location(tst=1_700_000_001))
        transition = SAMPLES["waypoints-transition-enter"]["payload_text"]

        async with _client(app) as client:
            await asyncio.to_thread(outage_broker.stop)
            down = [
                await client.post("/", content=body, headers=_headers("jane", "phone"))
                for body in (location, transition)
            ]
            await asyncio.to_thread(outage_broker.start)
            again = [
                await _retry_until_ok(client, body) for body in (location, transition)
            ]

        assert [response.status_code for response in down] == [503, 503]
        assert down[0].headers["retry-after"] == "5"
        assert "Kafka" in down[0].text
        assert [(r.status_code, r.content) for r in again] == [(200, b"[]")] * 2
        times = {fix.fix_time_ms for fix in _fixes(bootstrap, topic, 99, timeout_s=5)}
        assert times == {1_700_000_001_000}
        events = _events(bootstrap, events_topic, 99, timeout_s=5)
        assert {event.type for _, event in events} == {"geofenceEnter"}
        assert ingest.kafka_failures >= 1

    async def test_http_serves_on_its_own_port(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        port, stopping = free_port(), asyncio.Event()
        app = create_owntracks_app(ingest)
        server = asyncio.create_task(serve_owntracks(app, "127.0.0.1", port, stopping))
        body = SAMPLES["quicksetup-mqtt-location"]["payload_text"]

        try:
            response = await _post_when_listening(
                f"http://127.0.0.1:{port}/pub?u=jane&d=nokia", body
            )
        finally:
            stopping.set()
            await server

        assert (response.status_code, response.text) == (200, "[]")
        assert read_topic(kafka_bootstrap, ingest_topic, 1)[0][0] == b"jane/nokia"


async def _retry_until_ok(client: httpx.AsyncClient, body: str) -> httpx.Response:
    """What the app does with a queued message: send it again until it is taken."""
    for _ in range(30):
        response = await client.post(
            "/", content=body, headers=_headers("jane", "phone")
        )
        if response.status_code == 200:
            return response
        await asyncio.sleep(1)
    return response


async def _post_when_listening(url: str, body: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        for _ in range(50):
            try:
                return await client.post(url, content=body)
            except httpx.ConnectError:
                await asyncio.sleep(0.1)
        return await client.post(url, content=body)


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    return host, int(port)


@contextmanager
def _phone(url: str) -> Iterator[Callable[[str, str], None]]:
    """An OwnTracks app's MQTT client: ``publish`` returns once the broker acked."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"ot-{uuid.uuid4().hex}"
    )
    client.connect(*_host_port(url))
    client.loop_start()

    def publish(topic: str, payload: str) -> None:
        client.publish(topic, payload.encode(), qos=1).wait_for_publish(timeout=10)

    try:
        yield publish
    finally:
        client.disconnect()
        client.loop_stop()


async def _until(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


@pytest.mark.integration
@pytest.mark.usefixtures("owntracks_devices")
class TestOwnTracksMqtt:
    async def test_mqtt_location_and_transition_reach_kafka(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        kafka_topic: Callable[..., str],
        mqtt_url: str,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        events_topic = kafka_topic(partitions=3)
        base = f"owntracks-{uuid.uuid4().hex[:6]}"
        bridge = owntracks_bridge(
            mqtt_url, ingest, shared=True, topic=f"{base}/#", events_topic=events_topic
        )
        location = SAMPLES["quicksetup-mqtt-location"]

        with structlog.testing.capture_logs() as logs:
            async with bridge:
                with _phone(mqtt_url) as publish:
                    publish(f"{base}/jane/nokia", location["payload_text"])
                    publish(
                        f"{base}/jane/nokia/event",
                        SAMPLES["waypoints-transition-enter"]["payload_text"],
                    )
                    publish(
                        f"{base}/jane/nokia/waypoint",
                        SAMPLES["waypoints-waypoint"]["payload_text"],
                    )
                    publish(f"{base}/jane/nokia", '{"_type": "location"}')
                    publish(f"{base}/eve/x", location["payload_text"])
                acked = await _until(lambda: bridge.acked == 5)

        assert acked and bridge.unacked == 0
        [fix] = _fixes(kafka_bootstrap, ingest_topic, 1)
        _assert_expected(
            OwnTracksMessage("location", fixes=[fix]), location["expected"]
        )
        assert fix.device == "jane/nokia"
        [(key, event)] = _events(kafka_bootstrap, events_topic, 1)
        assert key == b"jane/nokia" and event.type == "geofenceEnter"
        malformed = [e for e in logs if e["event"] == "mqtt_payload_malformed"]
        assert [entry["reason"] for entry in malformed] == ["lat is required"]
        unknown = [e for e in logs if e["event"] == "mqtt_unknown_device"]
        assert [entry["topic"] for entry in unknown] == [f"{base}/eve/x"]

    async def test_mqtt_withholds_ack_while_kafka_is_down(
        self, make_ingest: MakeIngest, outage_broker: EmbeddedKafka, mqtt_url: str
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        suffix = uuid.uuid4().hex[:6]
        topic, events_topic = f"positions-otm-{suffix}", f"events-otm-{suffix}"
        ingest = await make_ingest(bootstrap, topic, delivery_timeout_s=2)
        await asyncio.to_thread(ensure_topics, bootstrap, {events_topic: 3})
        base = f"owntracks-{suffix}"
        bridge = owntracks_bridge(
            mqtt_url, ingest, shared=True, topic=f"{base}/#", events_topic=events_topic
        )

        async with bridge:
            with _phone(mqtt_url) as publish:
                await asyncio.to_thread(outage_broker.stop)
                publish(f"{base}/jane/phone", json.dumps(_location()))
                publish(
                    f"{base}/jane/phone/event",
                    SAMPLES["beacons-transition-enter"]["payload_text"],
                )
                await asyncio.sleep(4)  # longer than the delivery timeout
                withheld = (bridge.acked, bridge.unacked)
                await asyncio.to_thread(outage_broker.start)
                acked = await _until(lambda: bridge.acked == 2, timeout_s=40)

        assert withheld == (0, 2)
        assert acked
        [fix] = _fixes(bootstrap, topic, 1)
        assert fix.device == "jane/phone" and fix.fix_time_ms == 1_700_000_000_000
        events = _events(bootstrap, events_topic, 1)
        assert {(key, event.type) for key, event in events} == {
            (b"jane/phone", "geofenceEnter")
        }
