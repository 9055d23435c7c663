"""The embedded KRaft broker: formatted once, keeps data across restarts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipeline.config import SettingError
from pipeline.kafka import DurableProducer, ensure_topics
from pipeline.ports import free_port
from pipeline.services.kafka import EmbeddedKafka, KafkaServiceError, new_cluster_id
from tests.fixtures.kafka import read_topic, start_broker

pytestmark = pytest.mark.integration


class TestNewClusterId:
    def test_cluster_id_is_22_url_safe_characters(self) -> None:
        ids = {new_cluster_id() for _ in range(200)}

        assert len(ids) == 200
        assert all(len(i) == 22 and not i.startswith("-") for i in ids)


class TestEmbeddedKafka:
    async def test_broker_restart_keeps_records(self, tmp_path: Path) -> None:
        """Records acknowledged before a restart are all there after it."""
        broker = start_broker(tmp_path / "kafka")
        try:
            cluster = broker.cluster_id
            ensure_topics(broker.bootstrap_servers, {"kept": 2})
            records = [(b"k%d" % i, b"v%d" % i) for i in range(200)]
            async with DurableProducer(broker.bootstrap_servers) as producer:
                await producer.send_many("kept", records)

            broker.restart()

            assert broker.cluster_id == cluster
            got = read_topic(broker.bootstrap_servers, "kept", len(records))
            assert sorted(got) == sorted(records)
        finally:
            broker.stop()

    def test_broker_second_start_reuses_storage(self, tmp_path: Path) -> None:
        broker = start_broker(tmp_path / "kafka")
        meta = tmp_path / "kafka" / "data" / "meta.properties"
        first = meta.read_text()
        broker.stop()

        with EmbeddedKafka(tmp_path / "kafka", port=free_port()) as again:
            assert again.pid is not None
            assert meta.read_text() == first
            assert again.cluster_id in first
        assert again.pid is None

    def test_broker_writes_its_log_to_data_dir(
        self, kafka_broker: EmbeddedKafka
    ) -> None:
        log = kafka_broker.log_dir / "server.log"

        assert "Kafka Server started" in log.read_text()

    def test_broker_bootstrap_servers_is_host_port(self, tmp_path: Path) -> None:
        broker = EmbeddedKafka(tmp_path, port=12345, host="127.0.0.1")

        assert broker.bootstrap_servers == "127.0.0.1:12345"

    def test_broker_port_taken_raises_setting_error(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            broker = EmbeddedKafka(tmp_path, port=port)

            with pytest.raises(SettingError, match=rf"port {port} .*--kafka-port"):
                broker.start()

    def test_broker_exit_error_quotes_its_log(self, tmp_path: Path) -> None:
        """A broker that dies at start-up is reported with the end of its log."""
        data = tmp_path / "kafka" / "data"
        data.mkdir(parents=True)
        (data / "meta.properties").write_text("version=1\nnode.id=7\n")
        broker = EmbeddedKafka(tmp_path / "kafka", port=free_port())

        with pytest.raises(KafkaServiceError, match=r"exited with code") as caught:
            broker.start()

        assert "server.log" in str(caught.value)
        assert broker.pid is None
