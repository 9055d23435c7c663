"""The MQTT bridge against real Mosquitto (and amqtt), Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.ingest.mqtt import MqttBridge, decode_message
from pipeline.ingest.payloads import PayloadError
from pipeline.model import Fix
from pipeline.services.kafka import EmbeddedKafka
from pipeline.services.mqtt import EmbeddedMqttBroker, SystemMosquitto
from tests.fixtures.ingest import MakeIngest
from tests.fixtures.kafka import read_topic
from tests.fixtures.services import start_on_free_port

NOW_MS = 1_760_000_000_000


def _position(**fields: object) -> bytes:
    document = {"time": "2025-05-09T04:11:30Z", "latitude": 48.1, "longitude": 11.5}
    return json.dumps({**document, **fields}).encode()


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    return host, int(port)


@contextmanager
def _publisher(url: str) -> Iterator[Callable[[str, bytes], None]]:
    """A device's client: ``publish(topic, payload)`` returns once the broker acked."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}"
    )
    client.connect(*_host_port(url))
    client.loop_start()

    def publish(topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

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


async def _fixes(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30
) -> list[Fix]:
    records = read_topic(bootstrap, topic, expected, timeout_s=timeout_s)
    return [Fix.FromString(value) for _, value in records]


def _gps(region: str = "eu") -> str:
    """A topic prefix unique to the test: gps/{region}-{random}."""
    return f"gps/{region}-{uuid.uuid4().hex[:6]}"


class TestDecodeMessage:
    def test_decode_fills_device_and_region_from_topic(self) -> None:
        batch = decode_message("gps/eu/dev-1", _position(), server_time_ms=NOW_MS)

        [(_, fix)] = batch.fixes
        assert fix.device == "dev-1" and fix.protocol == "mqtt"
        assert json.loads(fix.attributes["region"]) == "eu"

    def test_decode_protobuf_fix_by_first_byte(self) -> None:
        payload = Fix(fix_time_ms=5, latitude=1, longitude=2).SerializeToString()

        batch = decode_message("gps/us/dev-9", payload, server_time_ms=NOW_MS)

        assert [fix.device for _, fix in batch.fixes] == ["dev-9"]

    def test_decode_refuses_device_other_than_topic(self) -> None:
        batch = decode_message(
            "gps/eu/dev-1", _position(uniqueId="dev-2"), server_time_ms=NOW_MS
        )

        assert batch.fixes == []
        assert "'dev-2' does not match topic device 'dev-1'" in batch.rejected[0].reason

    def test_decode_refuses_topic_without_device(self) -> None:
        with pytest.raises(PayloadError, match="topic must be gps/"):
            decode_message("gps/eu", _position(), server_time_ms=NOW_MS)


@pytest.mark.integration
class TestMqttBridge:
    async def test_bridge_publishes_json_and_protobuf(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        mqtt_url: str,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        prefix = _gps()
        bridge = MqttBridge(mqtt_url, ingest, shared=True, topic=f"{prefix}/+")
        protobuf = Fix(fix_time_ms=7000, latitude=3, longitude=4).SerializeToString()

        async with bridge:
            with _publisher(mqtt_url) as publish:
                publish(f"{prefix}/dev-1", _position(speed=50))
                publish(f"{prefix}/dev-2", protobuf)
            acked = await _until(lambda: bridge.acked == 2)
            fixes = await _fixes(kafka_bootstrap, ingest_topic, 2)

        assert acked and bridge.unacked == 0
        by_device = {fix.device: fix for fix in fixes}
        assert by_device["dev-1"].speed_kmh == pytest.approx(50.0)
        assert by_device["dev-2"].fix_time_ms == 7000
        assert {fix.protocol for fix in fixes} == {"mqtt"}
        region = prefix.split("/")[1]
        assert {json.loads(fix.attributes["region"]) for fix in fixes} == {region}

    async def test_bridge_acks_malformed_without_holding_valid(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        mqtt_url: str,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        prefix = _gps()
        bridge = MqttBridge(mqtt_url, ingest, shared=True, topic=f"{prefix}/+")

        with structlog.testing.capture_logs() as logs:
            async with bridge:
                with _publisher(mqtt_url) as publish:
                    publish(f"{prefix}/dev-1", b"{not json")
                    publish(f"{prefix}/dev-1", b"\xff\xff\xff")
                    publish(f"{prefix}/dev-1", _position(uniqueId="dev-2"))
                    publish(f"{prefix}/stranger", _position())
                    publish(f"{prefix}/dev-1", _position(latitude=10))
                acked = await _until(lambda: bridge.acked == 5)
                fixes = await _fixes(kafka_bootstrap, ingest_topic, 1)

        assert acked and bridge.unacked == 0
        assert [fix.latitude for fix in fixes] == [10.0]
        malformed = [e for e in logs if e["event"] == "mqtt_payload_malformed"]
        assert len(malformed) == 3
        assert all(entry["topic"] == f"{prefix}/dev-1" for entry in malformed)
        assert "not valid JSON" in malformed[0]["reason"]
        assert "not Protocol Buffers" in malformed[1]["reason"]
        unknown = [e for e in logs if e["event"] == "mqtt_unknown_device"]
        assert [entry["topic"] for entry in unknown] == [f"{prefix}/stranger"]

    async def test_bridge_withholds_ack_while_kafka_is_down(
        self, make_ingest: MakeIngest, outage_broker: EmbeddedKafka, mqtt_url: str
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        topic = f"positions-mqtt-{uuid.uuid4().hex[:6]}"
        ingest = await make_ingest(bootstrap, topic, delivery_timeout_s=2)
        prefix = _gps()
        bridge = MqttBridge(mqtt_url, ingest, shared=True, topic=f"{prefix}/+")

        async with bridge:
            with _publisher(mqtt_url) as publish:
                publish(f"{prefix}/dev-1", _position(latitude=1))
                assert await _until(lambda: bridge.acked == 1)
                await asyncio.to_thread(outage_broker.stop)
                publish(f"{prefix}/dev-1", _position(latitude=2))
                await asyncio.sleep(4)  # longer than the delivery timeout
                withheld = (bridge.acked, bridge.unacked)
                await asyncio.to_thread(outage_broker.start)
                acked = await _until(lambda: bridge.acked == 2, timeout_s=30)

        assert withheld == (1, 1)
        assert acked
        fixes = await _fixes(bootstrap, topic, 2)
        assert sorted({fix.latitude for fix in fixes}) == [1.0, 2.0]
        assert ingest.kafka_failures >= 1

    async def test_bridge_unacked_messages_are_redelivered_after_restart(
        self, make_ingest: MakeIngest, outage_broker: EmbeddedKafka, mqtt_url: str
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        topic = f"positions-mqtt-{uuid.uuid4().hex[:6]}"
        ingest = await make_ingest(bootstrap, topic, delivery_timeout_s=2)
        prefix, client_id = _gps(), f"bridge-{uuid.uuid4().hex[:6]}"

        def bridge() -> MqttBridge:
            return MqttBridge(
                mqtt_url, ingest, shared=True, topic=f"{prefix}/+", client_id=client_id
            )

        await asyncio.to_thread(outage_broker.stop)
        async with bridge() as first:
            with _publisher(mqtt_url) as publish:
                for latitude in range(3):
                    publish(f"{prefix}/dev-1", _position(latitude=latitude))
            assert await _until(lambda: first.received == 3)
        assert first.acked == 0
        await asyncio.to_thread(outage_broker.start)

        async with bridge() as second:
            acked = await _until(lambda: second.acked == 3, timeout_s=30)

        assert acked
        fixes = await _fixes(bootstrap, topic, 3)
        assert sorted({fix.latitude for fix in fixes}) == [0.0, 1.0, 2.0]

    async def test_bridge_resumes_after_broker_restart(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        service_data_dir: Path,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        broker = start_on_free_port(
            lambda port: SystemMosquitto(port, service_data_dir)
        )
        bridge = MqttBridge(broker.url, ingest, shared=True)

        try:
            async with bridge:
                with _publisher(broker.url) as publish:
                    publish("gps/eu/dev-1", _position(latitude=1))
                assert await _until(lambda: bridge.acked == 1)
                await asyncio.to_thread(broker.stop)
                await asyncio.sleep(1)
                await asyncio.to_thread(broker.start)
                with structlog.testing.capture_logs() as logs:
                    resubscribed = await _until(
                        lambda: any(e["event"] == "mqtt_bridge_connected" for e in logs)
                    )
                await asyncio.sleep(0.5)  # the SUBACK
                with _publisher(broker.url) as publish:
                    publish("gps/eu/dev-1", _position(latitude=2))
                acked = await _until(lambda: bridge.acked == 2)
        finally:
            broker.stop()

        assert resubscribed and acked
        fixes = await _fixes(kafka_bootstrap, ingest_topic, 2)
        assert sorted(fix.latitude for fix in fixes) == [1.0, 2.0]

    async def test_bridge_instances_share_the_load(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        mqtt_url: str,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        prefix = _gps()
        group = f"group-{uuid.uuid4().hex[:6]}"
        bridges = [
            MqttBridge(
                mqtt_url,
                ingest,
                shared=True,
                group=group,
                topic=f"{prefix}/+",
                client_id=f"{group}-instance-{instance}",
            )
            for instance in range(2)
        ]

        async with bridges[0], bridges[1]:
            with _publisher(mqtt_url) as publish:
                for latitude in range(20):
                    publish(f"{prefix}/dev-1", _position(latitude=latitude))
            done = await _until(lambda: sum(b.acked for b in bridges) == 20)

        assert done
        assert all(bridge.acked > 0 for bridge in bridges)
        assert len(await _fixes(kafka_bootstrap, ingest_topic, 20)) == 20

    async def test_bridge_plain_subscription_on_amqtt(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        broker = start_on_free_port(lambda port: EmbeddedMqttBroker(port))
        bridge = MqttBridge(broker.url, ingest, shared=False)

        try:
            with structlog.testing.capture_logs() as logs:
                async with bridge:
                    with _publisher(broker.url) as publish:
                        publish("gps/eu/dev-2", _position())
                    acked = await _until(lambda: bridge.acked == 1)
        finally:
            broker.stop()

        assert acked
        assert [
            fix.device for fix in await _fixes(kafka_bootstrap, ingest_topic, 1)
        ] == ["dev-2"]
        assert any(e["event"] == "mqtt_bridge_plain_subscription" for e in logs)
