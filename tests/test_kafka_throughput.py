"""How many records per second DurableProducer gets acknowledged on this machine.

100,000 small records (a 12-byte key, a 60-byte value) in ``send_many`` batches of
500, awaited one after another (one ingest connection) and eight at a time (many
connections).  The figures are printed (``pytest -s``); the assertions only check
that every record was acknowledged and stored, and a floor far below what was
measured, so a loaded machine does not fail the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest

from pipeline.kafka import DurableProducer
from tests.fixtures.kafka import read_topic

pytestmark = pytest.mark.integration

RECORDS = 100_000
BATCH = 500
FLOOR_PER_S = 5_000


def _batches() -> list[list[tuple[bytes, bytes]]]:
    value = b"x" * 52
    records = [
        (b"device-%05d" % (i % 10_000), b"%08d" % i + value) for i in range(RECORDS)
    ]
    return [records[i : i + BATCH] for i in range(0, RECORDS, BATCH)]


async def _send_all(
    producer: DurableProducer,
    topic: str,
    batches: Sequence[list[tuple[bytes, bytes]]],
    concurrency: int,
) -> None:
    queue = iter(batches)

    async def worker() -> None:
        for batch in queue:
            await producer.send_many(topic, batch)

    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(worker())


class TestDurableProducerThroughput:
    @pytest.mark.parametrize("concurrency", [1, 8])
    async def test_send_many_throughput_100k(
        self,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        concurrency: int,
    ) -> None:
        topic = kafka_topic(partitions=8)
        batches = _batches()

        async with DurableProducer(kafka_bootstrap) as producer:
            began = time.perf_counter()
            await _send_all(producer, topic, batches, concurrency)
            seconds = time.perf_counter() - began

        rate = RECORDS / seconds
        print(
            f"\nDurableProducer: {RECORDS} records, batches of {BATCH}, "
            f"{concurrency} in flight: {seconds:.2f} s, {rate:,.0f} records/s acked"
        )
        stored = read_topic(kafka_bootstrap, topic, RECORDS, timeout_s=60)
        assert len(stored) == RECORDS
        assert rate > FLOOR_PER_S
