"""Reading a topic as one member of a Kafka consumer group, at least once.

Several notifier instances share the ``events`` topic's partitions through one
consumer group.  :class:`GroupConsumer` runs a confluent-kafka consumer on a
thread of its own (as :mod:`pipeline.kafka` does) and hands each batch of
messages to an async handler on the event loop, waiting for it to finish.  Only
then are the batch's offsets stored; librdkafka commits stored offsets every
``commit_interval_ms``, when partitions are taken away, and on close.  A batch
whose handler did not finish (the process stopped, the instance crashed) is
therefore read again by whoever owns the partition next: at least once, and
possibly twice.

A group that has never committed starts at the end of each partition, not at
its beginning: a notifier started for the first time does not announce the
topic's whole retained history.  The end offsets are taken when the partitions
are assigned, before ``ready`` is set, so an event written after that is seen.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from pipeline.kafka import POLL_INTERVAL_S, KafkaUnavailable

__all__ = ["BatchHandler", "GroupConsumer"]

log = structlog.get_logger("rastro.notify")

BatchHandler = Callable[[list[bytes]], Coroutine[Any, Any, None]]
BATCH = 500


class GroupConsumer:
    """One member of consumer group ``group`` on ``topic``, feeding ``handle``.

    Run :meth:`run` as a task; cancelling it stops the thread, which closes its
    consumer (committing what was handled).  ``ready`` is set each time
    partitions are assigned.  ``config`` adds or overrides librdkafka settings.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        handle: BatchHandler,
        *,
        ready: asyncio.Event | None = None,
        batch: int = BATCH,
        commit_interval_ms: int = 1000,
        timeout_s: float = 30.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not bootstrap or not topic or not group:
            message = (
                f"bootstrap, topic and group must be non-empty, got "
                f"{bootstrap!r}, {topic!r}, {group!r}"
            )
            raise ValueError(message)
        self.topic = topic
        self.group = group
        self._handle = handle
        self._ready = ready
        self._batch = batch
        self._timeout_s = timeout_s
        self._settings: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": commit_interval_ms,
            # Offsets are stored by hand, once a batch was handled.
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
            "log_level": 2,
            **(config or {}),
        }
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0

    async def run(self) -> None:
        """Consume until cancelled; raises :class:`KafkaUnavailable` if it fails."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        thread_done: asyncio.Future[None] = self._loop.create_future()
        thread = threading.Thread(
            target=self._run,
            args=(thread_done,),
            name=f"rastro-notify-{self.topic}",
            daemon=True,
        )
        thread.start()
        try:
            await asyncio.shield(thread_done)
        finally:
            self._stop.set()
            await asyncio.to_thread(thread.join)

    def _run(self, done: asyncio.Future[None]) -> None:
        error: BaseException | None = None
        try:
            self._consume()
        except KafkaException as failure:
            message = f"consumer of topic {self.topic!r} failed: {failure}"
            error = KafkaUnavailable(message)
        except BaseException as failure:  # handed to the awaiting task
            error = failure
        self._settle(done, error)

    def _consume(self) -> None:
        consumer = Consumer(self._settings)
        try:
            consumer.subscribe(
                [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            while not self._stop.is_set():
                messages = consumer.consume(self._batch, POLL_INTERVAL_S)
                usable = [message for message in messages if self._usable(message)]
                if not usable:
                    continue
                if not self._hand_over([m.value() or b"" for m in usable]):
                    return
                self._store(consumer, usable)
        finally:
            consumer.close()  # commits the stored offsets

    def _hand_over(self, values: list[bytes]) -> bool:
        """Run the handler on the loop and wait; ``False`` when stopping instead."""
        assert self._loop is not None
        try:
            future = asyncio.run_coroutine_threadsafe(self._handle(values), self._loop)
        except RuntimeError:  # the loop is closed
            return False
        while True:
            try:
                future.result(timeout=POLL_INTERVAL_S)
            except TimeoutError:
                if self._stop.is_set():
                    future.cancel()
                    return False
                continue
            except concurrent.futures.CancelledError:  # the loop is shutting down
                return False
            except Exception as error:
                # The handler deals with bad events itself; this is a bug.  The
                # batch is passed over rather than stopping notifications.
                log.error(
                    "notify_batch_failed", topic=self.topic, error=type(error).__name__
                )
            self.batches += 1
            return True

    def _store(self, consumer: Consumer, messages: list[Message]) -> None:
        ends: dict[int, int] = {}
        for message in messages:
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None:
                ends[partition] = max(ends.get(partition, -1), offset + 1)
        offsets = [TopicPartition(self.topic, p, end) for p, end in ends.items()]
        try:
            consumer.store_offsets(offsets=offsets)
        except KafkaException as error:
            # The partition was taken away meanwhile: its next owner reads again.
            log.info("notify_offsets_not_stored", reason=error.args[0].str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=self._timeout_s)
        for partition, known in zip(partitions, committed, strict=True):
            if known.offset >= 0:
                partition.offset = known.offset
            else:
                # Never committed: from the end, explicitly and now, not when
                # fetching starts (which would miss what is written meanwhile).
                _low, high = consumer.get_watermark_offsets(
                    partition, timeout=self._timeout_s
                )
                partition.offset = high
        consumer.assign(partitions)
        log.info(
            "notify_partitions_assigned",
            topic=self.topic,
            partitions=sorted(p.partition for p in partitions),
        )
        if self._ready is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("notify_commit_failed", reason=error.args[0].str())

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("notify_consume_error", topic=self.topic, error=error.str())
        return False

    def _settle(self, done: asyncio.Future[None], error: BaseException | None) -> None:
        def settle() -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop is closed: nobody waits
                pass
