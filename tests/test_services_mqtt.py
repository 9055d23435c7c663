"""The MQTT brokers Rastro starts: embedded amqtt (MQTT 3.1.1), Debian's Mosquitto."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from pipeline.config import SettingError
from pipeline.ports import free_port
from pipeline.services.mqtt import EmbeddedMqttBroker, MqttServiceError, SystemMosquitto

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[EmbeddedMqttBroker | SystemMosquitto]:
    """Each broker kind, started on a free port."""
    started: EmbeddedMqttBroker | SystemMosquitto
    if request.param == "amqtt":
        started = EmbeddedMqttBroker(free_port(), log_file=tmp_path / "amqtt.log")
    else:
        started = SystemMosquitto(free_port(), tmp_path / "mosquitto")
    with started:
        yield started


class _Collector:
    """A paho client that records the payloads it receives."""

    def __init__(self, host: str, port: int, version: MQTTProtocolVersion) -> None:
        self.payloads: list[bytes] = []
        self.arrived = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=version,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT_S), "no SUBACK"

    def wait_for(self, count: int) -> list[bytes]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.payloads) >= count, TIMEOUT_S)
        return self.payloads

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(
        self, client: object, userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        with self.arrived:
            self.payloads.append(message.payload)
            self.arrived.notify_all()


def _publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    publisher = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}"
    )
    publisher.connect(host, port)
    publisher.loop_start()
    try:
        for payload in payloads:
            publisher.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT_S)
    finally:
        publisher.disconnect()
        publisher.loop_stop()


class TestMqttBroker:
    def test_mqtt_broker_delivers_qos1(
        self, broker: EmbeddedMqttBroker | SystemMosquitto
    ) -> None:
        subscriber = _Collector(broker.host, broker.port, MQTTProtocolVersion.MQTTv311)
        try:
            subscriber.subscribe("rastro/test/+")
            _publish(broker.host, broker.port, "rastro/test/d1", [b"one", b"two"])
            received = subscriber.wait_for(2)
        finally:
            subscriber.close()

        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert received == [b"one", b"two"]

    def test_mqtt_broker_stop_frees_port(
        self, broker: EmbeddedMqttBroker | SystemMosquitto
    ) -> None:
        broker.stop()

        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect((broker.host, broker.port))

    @pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
    def test_mqtt_broker_taken_port_names_setting(
        self, kind: str, tmp_path: Path, taken_port: int
    ) -> None:
        started: EmbeddedMqttBroker | SystemMosquitto
        if kind == "amqtt":
            started = EmbeddedMqttBroker(taken_port)
        else:
            started = SystemMosquitto(taken_port, tmp_path)

        with pytest.raises(SettingError, match=rf"port {taken_port} .* --mqtt-port"):
            started.start()


class TestEmbeddedMqttBroker:
    def test_embedded_broker_says_no_shared_subscriptions(self) -> None:
        assert EmbeddedMqttBroker(free_port()).supports_shared_subscriptions is False


class TestSystemMosquitto:
    def test_mosquitto_shares_subscription_over_mqtt5(
        self, mqtt_broker: SystemMosquitto
    ) -> None:
        """Two MQTT 5 members of one $share group split the messages between them."""
        topic = f"rastro/shared/{uuid.uuid4().hex[:8]}"
        members = [
            _Collector(mqtt_broker.host, mqtt_broker.port, MQTTProtocolVersion.MQTTv5)
            for _ in range(2)
        ]
        try:
            for member in members:
                member.subscribe(f"$share/ingest/{topic}")
            _publish(
                mqtt_broker.host,
                mqtt_broker.port,
                topic,
                [b"%d" % n for n in range(20)],
            )
            deadline = time.monotonic() + TIMEOUT_S
            while (
                sum(len(m.payloads) for m in members) < 20
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            counts = [len(member.payloads) for member in members]
        finally:
            for member in members:
                member.close()

        assert mqtt_broker.supports_shared_subscriptions is True
        assert sum(counts) == 20
        assert min(counts) > 0

    def test_mosquitto_config_raises_queue(self, mqtt_broker: SystemMosquitto) -> None:
        config = mqtt_broker.config_file.read_text()

        assert f"listener {mqtt_broker.port} 127.0.0.1" in config
        assert "max_queued_messages 200000" in config

    def test_mosquitto_missing_binary_named(self, tmp_path: Path) -> None:
        broker = SystemMosquitto(
            free_port(), tmp_path, binary=Path("/nonexistent/mosq")
        )

        with pytest.raises(MqttServiceError, match="/nonexistent/mosq"):
            broker.start()

    def test_mqtt_url_fixture_points_at_mosquitto(self, mqtt_url: str) -> None:
        assert mqtt_url.startswith("mqtt://127.0.0.1:")
