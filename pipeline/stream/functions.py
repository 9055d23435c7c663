"""The Python functions of the streaming job: decode and check, then per-device state.

Both are thin: the decisions live in :mod:`pipeline.stream.records`.  They run in
Flink's thread mode, inside the TaskManager's JVM, so they must be picklable and
open their connections in :meth:`open`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.common.typeinfo import TypeInformation
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    FlatMapFunction,
    KeyedProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import (
    MapStateDescriptor,
    StateTtlConfig,
    ValueStateDescriptor,
)

from geo.fixes import Rejection
from pipeline.stream.latest import LatestStore
from pipeline.stream.records import (
    FIELD_NAMES,
    MALFORMED,
    Accepted,
    accept,
    judge,
    position_signature,
)

__all__ = [
    "DEDUP_TTL_HOURS",
    "AcceptFixes",
    "DeviceState",
    "FixTime",
    "fix_row_type",
]

log = structlog.get_logger("rastro.stream")

#: The longest a device's newest fix waits before it is written to Redis.
LATEST_FLUSH_MS = 200

#: How long a device remembers the fixes it accepted, to drop exact repeats.
#: Trackers resend their unacknowledged buffer after a reconnect, within minutes.
DEDUP_TTL_HOURS = 1


def fix_row_type() -> TypeInformation:
    """The Flink row type of an accepted fix, columns as :data:`FIELD_NAMES`."""
    types = [
        Types.STRING(),
        Types.LONG(),
        Types.LONG(),
        Types.DOUBLE(),
        Types.DOUBLE(),
        Types.FLOAT(),
        Types.FLOAT(),
        Types.LONG(),
        Types.FLOAT(),
        Types.FLOAT(),
        Types.INT(),
        Types.BOOLEAN(),
        Types.STRING(),
        Types.STRING(),
        Types.STRING(),
        Types.PRIMITIVE_ARRAY(Types.BYTE()),
    ]
    return Types.ROW_NAMED(list(FIELD_NAMES), types)


class AcceptFixes(FlatMapFunction):  # type: ignore[misc]
    """Kafka payload -> accepted fix row, or nothing (counted by reason)."""

    def __init__(self, h3_resolution: int) -> None:
        self._resolution = h3_resolution
        self._rejected: dict[str, Any] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        """Register one rejection counter per reason code."""
        metrics = runtime_context.get_metrics_group()
        reasons = [MALFORMED, *(reason.value for reason in Rejection)]
        self._rejected = {
            reason: metrics.counter("fixes_rejected_" + reason) for reason in reasons
        }

    def flat_map(self, value: Row) -> Iterator[Row]:
        """Emit the fix as a row when it passes the rules."""
        outcome = accept(value[0], self._resolution)
        if isinstance(outcome, Accepted):
            yield Row(*outcome.as_tuple())
            return

        self._rejected[outcome].inc()
        log.debug("fix_rejected", reason=outcome)


class FixTime(TimestampAssigner):  # type: ignore[misc]
    """Event time is the device's fix time."""

    def extract_timestamp(self, value: Row, record_timestamp: int) -> int:
        """Read ``fix_time_ms`` from an accepted fix row."""
        return int(value[1])


class DeviceState(KeyedProcessFunction):  # type: ignore[misc]
    """Per device: drop exact repeats, advance the latest fix in Redis (batched).

    State: the newest accepted fix time, and the position accepted at each recent
    fix time (kept :data:`DEDUP_TTL_HOURS`).  Both are checkpointed, so after a
    restore a replayed fix is recognised as already seen.
    """

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._store: LatestStore | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        """Declare the state and connect to Redis."""
        self._latest = runtime_context.get_state(
            ValueStateDescriptor("latest_fix_time_ms", Types.LONG())
        )
        seen = MapStateDescriptor("seen_positions", Types.LONG(), Types.STRING())
        seen.enable_time_to_live(
            StateTtlConfig.new_builder(Time.hours(DEDUP_TTL_HOURS)).build()
        )
        self._seen = runtime_context.get_map_state(seen)
        self._duplicates = runtime_context.get_metrics_group().counter(
            "fixes_duplicate"
        )
        self._store = LatestStore(self._redis_url, max_delay_s=LATEST_FLUSH_MS / 1000)

    def close(self) -> None:
        """Close the Redis connection."""
        if self._store is not None:
            self._store.close()

    def process_element(
        self, value: Row, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Row]:
        """Pass a fix on unless it repeats one; store it in Redis if newest."""
        fix_time_ms = value[1]
        signature = position_signature(value[3], value[4])
        verdict = judge(
            fix_time_ms,
            signature,
            seen_signature=self._seen.get(fix_time_ms),
            latest_ms=self._latest.value(),
        )
        if verdict.duplicate:
            self._duplicates.inc()
            return

        self._seen.put(fix_time_ms, signature)
        if verdict.newest:
            self._latest.update(fix_time_ms)
            self._offer_latest(value[0], fix_time_ms, value[14], ctx)
        yield value

    def on_timer(
        self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext
    ) -> Iterator[Row]:
        """Write the latest fixes still pending when traffic paused."""
        assert self._store is not None
        self._store.flush()
        return iter(())

    def _offer_latest(
        self,
        device: str,
        fix_time_ms: int,
        document: str,
        ctx: KeyedProcessFunction.Context,
    ) -> None:
        # A processing-time timer flushes a batch that no later fix completes.
        assert self._store is not None
        was_empty = self._store.pending == 0
        self._store.offer(device, fix_time_ms, document)
        if was_empty and self._store.pending:
            service = ctx.timer_service()
            due = service.current_processing_time() + LATEST_FLUSH_MS
            service.register_processing_time_timer(due)
