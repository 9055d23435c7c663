"""Kafka for asyncio code: a durable producer, topic set-up and a broadcast tail.

Everything here wraps confluent-kafka (librdkafka).  librdkafka does its network work
on its own threads; Python only hands records over (``produce``) and collects
results (``poll``/``consume``).  Those calls run on a thread of our own, never on the
event loop, and hand results back with ``loop.call_soon_threadsafe``: once per batch
of records for the producer, once per batch of messages for the tail.

- :class:`DurableProducer` resolves :meth:`~DurableProducer.send_many` only when
  every record is acknowledged by all in-sync replicas (``acks=all``, idempotent, so
  librdkafka's retries never write a record twice), and raises
  :class:`KafkaUnavailable` when that did not happen within ``delivery_timeout_s``.
  Ingest acknowledges a tracker's upload only after that, so an acknowledged fix is
  never lost to a broker outage.
- :func:`ensure_topics` creates missing topics (zstd-compressed) and leaves
  existing ones alone.
- :func:`tail_topic` yields every new message of a topic to every caller (the API's
  WebSocket hub tails ``live`` this way): no consumer group shares the partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # what confluent_kafka.admin re-exports

log = structlog.get_logger("rastro.kafka")

POSITIONS = "positions"
LIVE = "live"
EVENTS = "events"

#: The header of a ``positions`` record that carries its fix time (decimal epoch
#: milliseconds): the streaming job's watermarks follow it.  The record's own Kafka
#: timestamp stays the time it was sent, because time-based retention counts from
#: the record timestamp and would delete a fix buffered for days soon after it came.
FIX_TIME_HEADER = "fix-time-ms"

#: Kafka headers of one record: ``(name, value)`` pairs.
Headers = Sequence[tuple[str, bytes]]


def fix_time_headers(fix_time_ms: int) -> list[tuple[str, bytes]]:
    """The headers of a ``positions`` record whose fix time is ``fix_time_ms``.

    >>> fix_time_headers(1_772_352_000_000)
    [('fix-time-ms', b'1772352000000')]
    """
    return [(FIX_TIME_HEADER, str(fix_time_ms).encode("ascii"))]


# How long a poll or consume call may block before checking whether to stop.
POLL_INTERVAL_S = 0.1
# Extra time send_many waits past delivery_timeout_s for librdkafka's own verdict
# (it scans for timed-out messages about once a second).
DELIVERY_GRACE_S = 1.5
TAIL_BATCH = 500
TAIL_QUEUED_BATCHES = 64


class KafkaUnavailable(RuntimeError):
    """Records could not be made durable: the broker is down, slow or refused them."""


def _producer_config(
    bootstrap: str, delivery_timeout_s: float, linger_ms: float
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "zstd",
        "linger.ms": linger_ms,
        "message.timeout.ms": int(delivery_timeout_s * 1000),
        # librdkafka's default partitioner hashes keys with CRC32; murmur2 is what
        # the Java client (and so Flink) uses, so one key maps to one partition
        # whichever client wrote it.
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 1_000_000,
        "socket.connection.setup.timeout.ms": 5000,
        # A restarted broker is found again within a second or two, not ten.
        "reconnect.backoff.max.ms": 1000,
        # Connection failures are reported once through error_cb instead.
        "log_level": 2,
    }


class _Delivery:
    """The outcome of one ``send_many``: counts acknowledgements on the poll thread.

    Each record's delivery report decrements a plain counter (all reports arrive on
    the producer's one poll thread); the event loop is woken once, when the last
    record is acknowledged or the first one fails.
    """

    __slots__ = ("error", "failed", "future", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, records: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = records
        self.failed = 0
        self.error: KafkaError | None = None

    def __call__(self, error: KafkaError | None, _message: Message) -> None:
        self.remaining -= 1
        if error is not None:
            self.failed += 1
            if self.error is None:
                self.error = error
                self._wake()
        elif self.remaining == 0:
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class DurableProducer:
    """An idempotent, ``acks=all`` producer whose sends resolve on acknowledgement.

    ``delivery_timeout_s`` bounds how long a record may wait for its acknowledgement,
    retries included (librdkafka's ``message.timeout.ms``).  ``linger_ms`` is how long
    librdkafka gathers records into one request.  ``config`` adds or overrides
    librdkafka settings.  A thread of the producer's own serves delivery reports
    until :meth:`close`.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        delivery_timeout_s: float = 10.0,
        linger_ms: float = 5.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not bootstrap:
            message = "bootstrap must name at least one HOST:PORT, got ''"
            raise ValueError(message)
        if delivery_timeout_s <= 0:
            message = f"delivery_timeout_s must be positive, got {delivery_timeout_s!r}"
            raise ValueError(message)
        self.bootstrap = bootstrap
        self.delivery_timeout_s = delivery_timeout_s
        settings = _producer_config(bootstrap, delivery_timeout_s, linger_ms)
        settings.update(config or {})
        settings["error_cb"] = self._on_error
        self._last_error: int | None = None
        self._fatal: KafkaError | None = None
        self._producer = Producer(settings)
        self._closed = False
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_reports, name="rastro-kafka-producer", daemon=True
        )
        self._poller.start()

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Send one record; resolve once it is acknowledged."""
        await self.send_many(topic, ((key, value),))

    async def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        *,
        headers: Sequence[Headers] | None = None,
    ) -> None:
        """Send ``(key, value)`` records; resolve once every one is acknowledged.

        ``headers`` are the records' Kafka headers, one sequence per record.
        Raises :class:`KafkaUnavailable` when any record failed or was not
        acknowledged within ``delivery_timeout_s``.  Records of one call keep their
        order within a partition.  After a failure some of the records may still
        have been written: a retry can duplicate them, never lose them.
        """
        if not records:
            return
        if headers is not None and len(headers) != len(records):
            message = f"{len(headers)} header lists for {len(records)} records"
            raise ValueError(message)
        self._check_usable(topic)
        delivery = _Delivery(asyncio.get_running_loop(), len(records))

        await self._produce_all(topic, records, headers, delivery)
        try:
            async with asyncio.timeout(self.delivery_timeout_s + DELIVERY_GRACE_S):
                await delivery.future
        except TimeoutError:
            message = (
                f"{delivery.remaining} of {len(records)} records to topic {topic!r} "
                f"not acknowledged within {self.delivery_timeout_s} s "
                f"by {self.bootstrap}"
            )
            raise KafkaUnavailable(message) from None
        if delivery.error is not None:
            message = (
                f"records to topic {topic!r} not acknowledged by {self.bootstrap}: "
                f"{delivery.error.str()}"
            )
            raise KafkaUnavailable(message)

    async def close(self) -> None:
        """Wait (up to ``delivery_timeout_s``) for records in flight, then stop."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        await asyncio.to_thread(self._poller.join)
        left = await asyncio.to_thread(self._producer.flush, self.delivery_timeout_s)
        if left:
            log.warning("kafka_producer_closed_unflushed", records=left)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _produce_all(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        headers: Sequence[Headers] | None,
        delivery: _Delivery,
    ) -> None:
        produce = self._producer.produce
        index, count = 0, len(records)
        while index < count:
            key, value = records[index]
            extra: list[tuple[str, str | bytes | None]] | None = None
            if headers is not None:
                extra = list(headers[index])
            try:
                produce(topic, value, key, on_delivery=delivery, headers=extra)
            except BufferError:
                # librdkafka's local queue is full: let the poll thread drain it.
                await asyncio.sleep(POLL_INTERVAL_S / 10)
                continue
            except KafkaException as error:
                message = f"could not queue records for topic {topic!r}: {error}"
                raise KafkaUnavailable(message) from error
            index += 1

    def _check_usable(self, topic: str) -> None:
        if self._closed:
            message = "the producer is closed"
            raise KafkaUnavailable(message)
        if self._fatal is not None:
            message = f"the producer failed for good: {self._fatal.str()}"
            raise KafkaUnavailable(message)
        if not topic:
            message = "topic must be a non-empty name, got ''"
            raise ValueError(message)

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(POLL_INTERVAL_S)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
            log.error("kafka_producer_fatal", error=error.str())
        elif error.code() != self._last_error:
            log.warning("kafka_producer_error", error=error.str())
        self._last_error = error.code()


def ensure_topics(
    bootstrap: str, topics: Mapping[str, int], *, timeout_s: float = 30.0
) -> None:
    """Create the missing ``topics`` (name to partition count); keep existing ones.

    New topics are zstd-compressed and get the broker's default replication factor.
    An existing topic is left as it is, even with another partition count (a warning
    says so).  Raises :class:`KafkaUnavailable` when the broker cannot be reached
    and :class:`ValueError` for a bad name or partition count.  Blocking: call it
    from a thread in asyncio code.
    """
    for name, partitions in topics.items():
        _check_topic(name, partitions)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    existing = _topic_partitions(admin, bootstrap, timeout_s)

    for name, partitions in topics.items():
        if name in existing and existing[name] != partitions:
            log.warning(
                "kafka_topic_partitions_differ",
                topic=name,
                wanted=partitions,
                actual=existing[name],
            )
    missing = [
        NewTopic(name, partitions, -1, config={"compression.type": "zstd"})
        for name, partitions in topics.items()
        if name not in existing
    ]
    if missing:
        _create(admin, bootstrap, missing, timeout_s)
        _wait_for_leaders(admin, [topic.topic for topic in missing], timeout_s)


def _check_topic(name: str, partitions: int) -> None:
    if not name or len(name) > 249:
        message = f"topic name must be 1 to 249 characters, got {name!r}"
        raise ValueError(message)
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        message = f"partitions of topic {name!r} must be an int, got {partitions!r}"
        raise ValueError(message)
    if partitions < 1:
        message = f"partitions of topic {name!r} must be at least 1, got {partitions}"
        raise ValueError(message)


def _topic_partitions(
    admin: AdminClient, bootstrap: str, timeout_s: float
) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        message = f"Kafka at {bootstrap} is unreachable: {error.args[0].str()}"
        raise KafkaUnavailable(message) from error
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _create(
    admin: AdminClient, bootstrap: str, topics: list[NewTopic], timeout_s: float
) -> None:
    futures = admin.create_topics(topics, operation_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as error:
            if error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            message = f"could not create topic {name!r} on {bootstrap}: {error}"
            raise KafkaUnavailable(message) from error
        except TimeoutError as error:
            message = f"creating topic {name!r} on {bootstrap} took over {timeout_s} s"
            raise KafkaUnavailable(message) from error
        log.info("kafka_topic_created", topic=name)


def _wait_for_leaders(
    client: AdminClient | Consumer, topics: Sequence[str], timeout_s: float
) -> dict[str, list[int]]:
    """Partition ids of each of ``topics`` once every partition has a leader.

    A topic created a moment ago is listed with no partitions, or partitions
    without a leader, for a while; producing to it or reading its offsets then
    fails.  Raises :class:`KafkaUnavailable` with the last reason after
    ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        reason = ""
        ready: dict[str, list[int]] = {}
        for name in topics:
            left = max(deadline - time.monotonic(), 0.1)
            try:
                metadata = client.list_topics(name, timeout=left)
            except KafkaException as error:
                reason = f"{name!r}: {error.args[0].str()}"
                break
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None or not topic.partitions:
                why = topic.error.str() if topic and topic.error else "no partitions"
                reason = f"{name!r}: {why}"
                break
            leaderless = [p for p, meta in topic.partitions.items() if meta.leader < 0]
            if leaderless:
                reason = f"{name!r}: no leader for partitions {sorted(leaderless)}"
                break
            ready[name] = sorted(topic.partitions)
        if not reason:
            return ready
        if time.monotonic() >= deadline:
            message = f"topic {reason} (after {timeout_s} s)"
            raise KafkaUnavailable(message)
        time.sleep(POLL_INTERVAL_S)


async def tail_topic(
    bootstrap: str,
    topic: str,
    *,
    ready: asyncio.Event | None = None,
    timeout_s: float = 30.0,
) -> AsyncIterator[bytes]:
    """Yield the value of every message written to ``topic`` from now on.

    Every caller gets every message of every partition: the tail assigns itself all
    partitions at their end offsets and belongs to no shared consumer group.
    ``ready`` is set once the end offsets are taken: a message written after that is
    seen.  Cancel the consuming task (or close the iterator) to stop; the consumer
    thread then closes its consumer within ``POLL_INTERVAL_S``.  Raises
    :class:`KafkaUnavailable` when the topic's partitions cannot be listed within
    ``timeout_s``.
    """
    tail = _Tail(bootstrap, topic, asyncio.get_running_loop(), timeout_s)
    tail.start()
    try:
        while True:
            batch = await tail.batches.get()
            tail.room.release()
            if isinstance(batch, BaseException):
                raise batch
            if batch is _ASSIGNED:
                if ready is not None:
                    ready.set()
                continue
            for value in batch:
                yield value
    finally:
        tail.stop()


# Queued by the tail's thread once its partitions are assigned.
_ASSIGNED: list[bytes] = []


class _Tail:
    """One broadcast consumer: a thread that owns a consumer and fills a queue.

    The consumer is created, used and closed on that thread only.  The queue holds
    at most ``TAIL_QUEUED_BATCHES`` batches (a semaphore the thread takes before
    queueing one), so a slow reader slows the thread down instead of growing
    memory; Kafka keeps what is not read yet.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.loop = loop
        self.timeout_s = timeout_s
        self.batches: asyncio.Queue[list[bytes] | BaseException] = asyncio.Queue()
        self.room = threading.Semaphore(TAIL_QUEUED_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"rastro-kafka-tail-{topic}", daemon=True
        )

    def start(self) -> None:
        """Start the consumer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to close its consumer and end (it does so within a poll)."""
        self._stop.set()

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                # Required by the client; never joined or committed to.
                "group.id": f"rastro-tail-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest",
                "log_level": 2,
            }
        )
        try:
            self._assign(consumer)
            if self._hand_over(_ASSIGNED):
                self._consume(consumer)
        except KafkaUnavailable as error:
            self._hand_over(error)
        except KafkaException as error:
            message = f"tail of topic {self.topic!r} failed: {error}"
            self._hand_over(KafkaUnavailable(message))
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> None:
        try:
            partitions = _wait_for_leaders(consumer, [self.topic], self.timeout_s)
        except KafkaUnavailable as error:
            message = f"cannot tail {error}"
            raise KafkaUnavailable(message) from error
        # Explicit end offsets, not OFFSET_END: that one is resolved later, when
        # fetching starts, and would miss what is written in between.
        ends = [
            TopicPartition(self.topic, partition, self._end(consumer, partition))
            for partition in partitions[self.topic]
        ]
        consumer.assign(ends)

    def _end(self, consumer: Consumer, partition: int) -> int:
        # A partition whose leader is not known yet (a topic created a moment ago,
        # a broker restarting) has no watermark: ask again until it has one.
        where = TopicPartition(self.topic, partition)
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = max(deadline - time.monotonic(), 0.1)
            try:
                _low, high = consumer.get_watermark_offsets(where, timeout=left)
            except KafkaException as error:
                high, failure = -1, error.args[0].str()
            else:
                failure = f"no end offset (got {high})"
            if high >= 0:
                return int(high)
            if time.monotonic() >= deadline or self._stop.is_set():
                message = (
                    f"cannot tail topic {self.topic!r}: partition {partition}: "
                    f"{failure}"
                )
                raise KafkaUnavailable(message)
            time.sleep(POLL_INTERVAL_S)

    def _consume(self, consumer: Consumer) -> None:
        while not self._stop.is_set():
            messages = consumer.consume(TAIL_BATCH, POLL_INTERVAL_S)
            values = [m.value() or b"" for m in messages if self._usable(m)]
            if values and not self._hand_over(values):
                return

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("kafka_tail_error", topic=self.topic, error=error.str())
        return False

    def _hand_over(self, item: list[bytes] | BaseException) -> bool:
        while not self.room.acquire(timeout=POLL_INTERVAL_S):
            if self._stop.is_set():
                return False
        try:
            self.loop.call_soon_threadsafe(self.batches.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is reading
            return False
        return True
