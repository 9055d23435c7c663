"""The asyncio Kafka layer on a real broker: durability, topics, broadcast tails."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # no __all__
    AdminClient,
    ConfigResource,
)

from pipeline.kafka import (
    EVENTS,
    LIVE,
    POSITIONS,
    DurableProducer,
    KafkaUnavailable,
    ensure_topics,
    tail_topic,
)
from pipeline.ports import free_port
from tests.fixtures.kafka import read_messages, read_topic, start_broker

pytestmark = pytest.mark.integration

MakeTopic = Callable[..., str]


def _partitions(bootstrap: str, topic: str) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return len(metadata.topics[topic].partitions)


def _records(count: int, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
    return [(b"dev-%d" % (i % 17), prefix + b"fix-%d" % i) for i in range(count)]


async def _collect(tail: AsyncIterator[bytes], count: int) -> list[bytes]:
    values: list[bytes] = []
    async for value in tail:
        values.append(value)
        if len(values) == count:
            break
    return values


class TestTopicNames:
    def test_topic_constants_are_the_pipeline_topics(self) -> None:
        assert (POSITIONS, LIVE, EVENTS) == ("positions", "live", "events")


class TestEnsureTopics:
    def test_ensure_topics_creates_missing_topic(self, kafka_bootstrap: str) -> None:
        ensure_topics(kafka_bootstrap, {"ensure-new": 3})

        assert _partitions(kafka_bootstrap, "ensure-new") == 3
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        resource = ConfigResource(ConfigResource.Type.TOPIC, "ensure-new")
        configs = admin.describe_configs([resource])[resource].result(timeout=10)
        assert configs["compression.type"].value == "zstd"

    def test_ensure_topics_twice_keeps_existing(self, kafka_bootstrap: str) -> None:
        ensure_topics(kafka_bootstrap, {"ensure-twice": 2})

        ensure_topics(kafka_bootstrap, {"ensure-twice": 5, "ensure-twice-b": 1})

        assert _partitions(kafka_bootstrap, "ensure-twice") == 2
        assert _partitions(kafka_bootstrap, "ensure-twice-b") == 1

    @pytest.mark.parametrize("partitions", [0, -1, 1.5, True])
    def test_ensure_topics_bad_partitions_refused(
        self, kafka_bootstrap: str, partitions: object
    ) -> None:
        with pytest.raises(ValueError, match=r"partitions of topic 'bad'"):
            ensure_topics(kafka_bootstrap, {"bad": partitions})  # type: ignore[dict-item]

    def test_ensure_topics_unreachable_broker_raises(self) -> None:
        bootstrap = f"127.0.0.1:{free_port()}"

        with pytest.raises(KafkaUnavailable, match=rf"Kafka at {bootstrap} is unr"):
            ensure_topics(bootstrap, {"nowhere": 1}, timeout_s=2)


class TestDurableProducer:
    async def test_send_many_resolves_after_ack(
        self, kafka_bootstrap: str, kafka_topic: MakeTopic
    ) -> None:
        """Once send_many returns, a fresh reader sees every record."""
        topic = kafka_topic(partitions=3)
        records = _records(1000)

        async with DurableProducer(kafka_bootstrap) as producer:
            await producer.send_many(topic, records)

            got = read_topic(kafka_bootstrap, topic, len(records), timeout_s=10)
        assert sorted(got) == sorted(records)

    async def test_send_one_record_round_trip(
        self, kafka_bootstrap: str, kafka_topic: MakeTopic
    ) -> None:
        topic = kafka_topic()

        async with DurableProducer(kafka_bootstrap) as producer:
            await producer.send(topic, b"dev-1", b"hello")

        assert read_topic(kafka_bootstrap, topic, 1) == [(b"dev-1", b"hello")]

    async def test_send_many_gives_each_record_its_headers(
        self, kafka_bootstrap: str, kafka_topic: MakeTopic
    ) -> None:
        """Headers go with their record; the Kafka time stays the time of sending."""
        topic = kafka_topic(partitions=2)
        records = _records(20)
        headers = [[("fix-time-ms", str(1_000 * i).encode())] for i in range(20)]

        before_ms = time.time_ns() // 1_000_000
        async with DurableProducer(kafka_bootstrap) as producer:
            await producer.send_many(topic, records, headers=headers)

        got = read_messages(kafka_bootstrap, topic, len(records))
        sent = dict(zip((value for _, value in records), headers, strict=True))
        assert {m.value(): m.headers() for m in got} == sent
        assert all(m.timestamp()[1] >= before_ms for m in got)

    async def test_send_many_headers_must_match_records(
        self, kafka_bootstrap: str
    ) -> None:
        async with DurableProducer(kafka_bootstrap) as producer:
            with pytest.raises(ValueError, match="2 header lists for 3 records"):
                await producer.send_many("positions", _records(3), headers=[[], []])

    async def test_send_many_keeps_key_order(
        self, kafka_bootstrap: str, kafka_topic: MakeTopic
    ) -> None:
        """One key's records come back in the order they were sent."""
        topic = kafka_topic(partitions=4)
        records = _records(500)

        async with DurableProducer(kafka_bootstrap) as producer:
            await producer.send_many(topic, records)

        got = read_topic(kafka_bootstrap, topic, len(records))
        for key in {key for key, _ in records}:
            sent = [value for k, value in records if k == key]
            assert [value for k, value in got if k == key] == sent

    async def test_send_many_empty_is_no_op(self, kafka_bootstrap: str) -> None:
        async with DurableProducer(kafka_bootstrap) as producer:
            await producer.send_many("never-created", [])

    async def test_send_many_unknown_topic_raises(self, kafka_bootstrap: str) -> None:
        """Topics are never created on demand: a typo is an error, not a topic."""
        async with DurableProducer(kafka_bootstrap, delivery_timeout_s=2) as producer:
            with pytest.raises(KafkaUnavailable, match=r"topic 'no-such-topic'"):
                await producer.send_many("no-such-topic", _records(3))

    async def test_send_many_nothing_listening_raises(self) -> None:
        bootstrap = f"127.0.0.1:{free_port()}"
        producer = DurableProducer(bootstrap, delivery_timeout_s=2)
        began = time.monotonic()

        with pytest.raises(KafkaUnavailable, match=r"not acknowledged"):
            await producer.send_many("positions", _records(10))

        assert time.monotonic() - began < 2 + 2
        await producer.close()

    async def test_send_after_close_raises(self, kafka_bootstrap: str) -> None:
        producer = DurableProducer(kafka_bootstrap)
        await producer.close()

        with pytest.raises(KafkaUnavailable, match=r"producer is closed"):
            await producer.send("positions", b"k", b"v")

    def test_producer_bad_timeout_refused(self, kafka_bootstrap: str) -> None:
        with pytest.raises(ValueError, match=r"delivery_timeout_s must be positive"):
            DurableProducer(kafka_bootstrap, delivery_timeout_s=0)


class TestBrokerOutage:
    async def test_outage_fails_sends_and_loses_no_acked_record(
        self, tmp_path: Path
    ) -> None:
        """Broker down: send_many raises in time.  Back up: sends succeed again, and
        every record that was acknowledged at any point is in the topic."""
        timeout_s = 3.0
        broker = start_broker(tmp_path / "kafka")
        acked: list[tuple[bytes, bytes]] = []
        try:
            ensure_topics(broker.bootstrap_servers, {"outage": 3})
            producer = DurableProducer(
                broker.bootstrap_servers, delivery_timeout_s=timeout_s
            )
            async with producer:
                before = _records(500, b"before-")
                await producer.send_many("outage", before)
                acked += before

                await asyncio.to_thread(broker.stop)
                began = time.monotonic()
                with pytest.raises(KafkaUnavailable, match=r"'outage'"):
                    await producer.send_many("outage", _records(500, b"during-"))
                assert time.monotonic() - began < timeout_s + 2

                await asyncio.to_thread(broker.start)
                after = _records(500, b"after-")
                await _send_until_accepted(producer, "outage", after, within_s=60)
                acked += after
                more = _records(500, b"more-")
                await producer.send_many("outage", more)
                acked += more

            got = read_topic(broker.bootstrap_servers, "outage", 10**9, timeout_s=5)
            assert set(acked) <= set(got)
        finally:
            broker.stop()


async def _send_until_accepted(
    producer: DurableProducer,
    topic: str,
    records: list[tuple[bytes, bytes]],
    *,
    within_s: float,
) -> None:
    """Retry as an ingest client would, until the reconnected broker acknowledges."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await producer.send_many(topic, records)
            return
        except KafkaUnavailable:
            if time.monotonic() > deadline:
                raise


class TestTailTopic:
    async def test_tail_sees_messages_written_after_ready(
        self, kafka_bootstrap: str, kafka_topic: MakeTopic
    ) -> None:
        topic = kafka_topic(partitions=3)
        async with DurableProducer(kafka_bootstrap) as producer:
            await producer.send_many(topic, _records(50, b"old-"))
            ready = asyncio.Event()
            tail = tail_topic(kafka_bootstrap, topic, ready=ready)
            reader = asyncio.create_task(_collect(tail, 300))
            await asyncio.wait_for(ready.wait(), 30)

            await producer.send_many(topic, _records(300, b"new-"))

            values = await asyncio.wait_for(reader, 30)
        assert sorted(values) == sorted(v for _, v in _records(300, b"new-"))

    async def test_tail_every_caller_sees_every_message(
        self, kafka_bootstrap: str, kafka_topic: MakeTopic
    ) -> None:
        """Two tails split nothing: each gets all messages of all partitions."""
        topic = kafka_topic(partitions=4)
        readies = [asyncio.Event(), asyncio.Event()]
        readers = [
            asyncio.create_task(
                _collect(tail_topic(kafka_bootstrap, topic, ready=ready), 400)
            )
            for ready in readies
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)

        async with DurableProducer(kafka_bootstrap) as producer:
            await producer.send_many(topic, _records(400))

        first, second = await asyncio.wait_for(asyncio.gather(*readers), 30)
        expected = sorted(value for _, value in _records(400))
        assert sorted(first) == expected
        assert sorted(second) == expected

    async def test_tail_cancel_stops_consumer_thread(
        self, kafka_bootstrap: str, kafka_topic: MakeTopic
    ) -> None:
        topic = kafka_topic()
        ready = asyncio.Event()
        reader = asyncio.create_task(
            _collect(tail_topic(kafka_bootstrap, topic, ready=ready), 1)
        )
        await asyncio.wait_for(ready.wait(), 30)
        threads = _tail_threads(topic)
        assert threads

        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

        for thread in threads:
            await asyncio.to_thread(thread.join, 5)
        assert not _tail_threads(topic)

    async def test_tail_unknown_topic_raises(self, kafka_bootstrap: str) -> None:
        tail = tail_topic(kafka_bootstrap, "no-such-tail", timeout_s=5)

        with pytest.raises(KafkaUnavailable, match=r"cannot tail topic 'no-such-tail'"):
            await asyncio.wait_for(_collect(tail, 1), 30)


def _tail_threads(topic: str) -> list[threading.Thread]:
    name = f"rastro-kafka-tail-{topic}"
    return [thread for thread in threading.enumerate() if thread.name == name]
