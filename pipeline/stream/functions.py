"""The Python function of the streaming job: per device, decode and check, then state.

It is thin: the decisions live in :mod:`pipeline.stream.records` and
:mod:`pipeline.stream.motion`.  It runs in Flink's thread mode, inside the
TaskManager's JVM, so it must be picklable and open its connections in
:meth:`open`.  It is the job's only Python operator: the Kafka source, the
watermarks (Kafka record time, which ingest sets to the fix time) and the keying
(Kafka record key, the device) stay in the JVM, because every crossing into
Python costs a record conversion there and back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from pyflink.common import Row, Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import (
    KeyedProcessFunction,
    OutputTag,
    RuntimeContext,
    TimeDomain,
)
from pyflink.datastream.state import (
    MapStateDescriptor,
    ValueStateDescriptor,
)

from geo.fixes import Rejection
from pipeline.stream.catalog import Catalog
from pipeline.stream.database import BlockingDatabase
from pipeline.stream.history import HistoryReader
from pipeline.stream.job import stream_addresses
from pipeline.stream.latest import LatestStore
from pipeline.stream.motion import DeviceMotion, MotionState, Outputs
from pipeline.stream.records import (
    FIELD_NAMES,
    MALFORMED,
    Accepted,
    accept,
    judge,
    position_signature,
)
from pipeline.stream.results import side_outputs
from pipeline.stream.snapshot import freeze, thaw

__all__ = [
    "DEDUP_WINDOW_MS",
    "KEY_MISMATCH",
    "DeviceState",
    "fix_row_type",
]

log = structlog.get_logger("rastro.stream")

#: The longest a device's newest fix waits before it is written to Redis.
LATEST_FLUSH_MS = 200

#: Timers are registered on whole steps of these, so that a steady stream of fixes
#: does not register one timer per fix.
EVENT_TIMER_STEP_MS = 1000
WALL_TIMER_STEP_MS = 100

#: Devices whose thawed motion state each instance keeps at hand (the state is
#: still written to Flink with every change; this only saves reading it back).
STATE_CACHE_DEVICES = 20_000

#: The rejection reason of a record whose Kafka key is not its fix's device: the
#: job keys its state by the record key, so such a record cannot be judged.
KEY_MISMATCH = "key_mismatch"

#: A device remembers the position of every fix it accepted up to this much fix
#: time before its newest one, to drop exact repeats: trackers resend their
#: unacknowledged buffer after a reconnect, within minutes.
DEDUP_WINDOW_MS = 3_600_000


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


class DeviceState(KeyedProcessFunction):  # type: ignore[misc]
    """Per device: check, drop exact repeats, latest to Redis, then the steppers.

    The input is ``Row(payload)`` keyed by the record's Kafka key: the payload is
    decoded and checked here (:func:`~pipeline.stream.records.accept`); a refused
    record is counted by reason (``fixes_rejected_<reason>``), and one whose key is
    not its device (:data:`KEY_MISMATCH`) too.

    The main output is every fix that is not a repeat, at once (history and the
    live feed).  The same fix then goes to :class:`~pipeline.stream.motion.
    DeviceMotion`, which puts it in fix-time order and runs the ``geo`` steppers;
    what they produce leaves on the side outputs of :mod:`pipeline.stream.results`.

    State: the newest accepted fix time and the position accepted at each recent
    fix time (:data:`DEDUP_WINDOW_MS`; forgotten once an hour of fix time, not
    with a state TTL, whose clean-up on every access cost a quarter of the
    operator's time), and the pickled
    :class:`~pipeline.stream.motion.MotionState`.  All of it is checkpointed, so
    after a restore a replayed fix is recognised as already seen and the steppers
    resume where the checkpoint left them.

    ``fleet_attributes`` are the fleet's settings (``motion_settings``), under each
    group's and device's (see :mod:`pipeline.stream.profiles`).  The PostgreSQL and
    Redis addresses are not arguments: they may hold passwords, so :meth:`open`
    reads them from the TaskManager's environment
    (:func:`~pipeline.stream.job.stream_addresses`).
    """

    def __init__(
        self,
        lateness_ms: int,
        h3_resolution: int,
        fleet_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self._resolution = h3_resolution
        self._rejected: dict[str, Any] = {}
        self._lateness_ms = lateness_ms
        self._fleet_attributes = dict(fleet_attributes or {})
        self._store: LatestStore | None = None
        self._database: BlockingDatabase | None = None
        self._states: OrderedDict[str, MotionState] = OrderedDict()
        self._latest_flush_ms: int | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        """Declare the state, connect to Redis and load the fleet's catalog."""
        self._latest = runtime_context.get_state(
            ValueStateDescriptor("latest_fix_time_ms", Types.LONG())
        )
        # Not "seen_positions": that one had a TTL, and a restore refuses a
        # descriptor whose TTL changed.
        self._seen = runtime_context.get_map_state(
            MapStateDescriptor("seen_fix_positions", Types.LONG(), Types.STRING())
        )
        self._motion = runtime_context.get_state(
            ValueStateDescriptor("motion", Types.PICKLED_BYTE_ARRAY())
        )
        metrics = runtime_context.get_metrics_group()
        self._duplicates = metrics.counter("fixes_duplicate")
        reasons = [MALFORMED, KEY_MISMATCH, *(reason.value for reason in Rejection)]
        self._rejected = {
            reason: metrics.counter("fixes_rejected_" + reason) for reason in reasons
        }
        postgres_dsn, redis_url = stream_addresses()
        self._store = LatestStore(redis_url, max_delay_s=LATEST_FLUSH_MS / 1000)

        self._database = BlockingDatabase(postgres_dsn)
        self._catalog = Catalog(self._database, fleet_attributes=self._fleet_attributes)
        self._catalog.refresh(force=True)
        self._engine = DeviceMotion(
            self._catalog, HistoryReader(self._database), self._lateness_ms
        )

    def close(self) -> None:
        """Close the Redis and PostgreSQL connections."""
        if self._store is not None:
            self._store.close()
        if self._database is not None:
            self._database.close()

    def process_element(
        self, value: Row, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Row | tuple[OutputTag, Row]]:
        """Pass a fix on unless refused or a repeat; store it in Redis if newest.

        Then hand it to the steppers and emit what they produced.
        """
        fix = self._accepted(value[0], ctx.get_current_key())
        if fix is None:
            return

        fix_time_ms = fix[1]
        signature = position_signature(fix[3], fix[4])
        latest_ms = self._latest.value()
        seen_signature = None
        if latest_ms is not None and fix_time_ms <= latest_ms:
            # Every remembered fix time is at most the newest: a fix in order
            # cannot be a repeat, and skips a state read (a call into the JVM).
            seen_signature = self._seen.get(fix_time_ms)
        verdict = judge(
            fix_time_ms,
            signature,
            seen_signature=seen_signature,
            latest_ms=latest_ms,
        )
        if verdict.duplicate:
            self._duplicates.inc()
            return

        self._seen.put(fix_time_ms, signature)
        if verdict.newest:
            self._latest.update(fix_time_ms)
            self._offer_latest(fix[0], fix_time_ms, fix[14], ctx)
            if _new_window(latest_ms, fix_time_ms):
                self._forget_seen_before(fix_time_ms - DEDUP_WINDOW_MS)
        yield Row(*fix)

        self._catalog.refresh()
        state = self._load(fix[0])
        assert state is not None
        out = Outputs()
        wall_ms = ctx.timer_service().current_processing_time()
        self._engine.receive(state, fix[:14], wall_ms, out)
        self._schedule(state, ctx)
        self._motion.update(freeze(state))
        yield from side_outputs(out, wall_ms)

    def on_timer(
        self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext
    ) -> Iterator[tuple[OutputTag, Row]]:
        """Flush pending latest fixes; run the steppers' timers when theirs."""
        event_time = ctx.time_domain() == TimeDomain.EVENT_TIME
        if not event_time:
            self._flush_latest_if_due(timestamp)

        state = self._load(ctx.get_current_key(), create=False)
        if state is None:
            return
        out = Outputs()
        wall_ms = ctx.timer_service().current_processing_time()
        if event_time and state.event_timer_ms == timestamp:
            state.event_timer_ms = None
            self._catalog.refresh()
            self._engine.fire(state, timestamp, wall_ms, out)
        elif not event_time and state.wall_timer_ms is not None:
            if timestamp < state.wall_timer_ms:
                return
            state.wall_timer_ms = None
            if self._nothing_due(state, timestamp, ctx):
                return
            self._catalog.refresh()
            watermark = _watermark(ctx)
            self._engine.wake(state, timestamp, out, watermark)
        else:
            return
        self._schedule(state, ctx)
        self._motion.update(freeze(state))
        yield from side_outputs(out, wall_ms)

    def _accepted(self, payload: bytes, key: str) -> tuple[Any, ...] | None:
        """The fix as a row tuple (:data:`FIELD_NAMES`), or ``None`` once counted."""
        outcome = accept(payload, self._resolution)
        if not isinstance(outcome, Accepted):
            self._rejected[outcome].inc()
            log.debug("fix_rejected", reason=outcome, key=key)
            return None
        if outcome.device != key:
            self._rejected[KEY_MISMATCH].inc()
            log.warning(
                "fix_rejected_key_mismatch",
                key=key,
                device=outcome.device,
                hint="producers to the positions topic must key records by device",
            )
            return None
        return outcome.as_tuple()

    def _forget_seen_before(self, horizon_ms: int) -> None:
        """Drop the remembered positions of fixes older than ``horizon_ms``."""
        old = [
            fix_time_ms for fix_time_ms in self._seen.keys() if fix_time_ms < horizon_ms
        ]
        for fix_time_ms in old:
            self._seen.remove(fix_time_ms)

    def _flush_latest_if_due(self, timestamp: int) -> None:
        """Write the pending latest fixes once their flush timer is reached.

        Every device's wall timer passes here; flushing at each of them would
        send Redis a round trip per timer instead of one per batch.
        """
        assert self._store is not None
        due = self._latest_flush_ms
        if due is not None and timestamp >= due:
            self._latest_flush_ms = None
            self._store.flush()

    def _nothing_due(
        self, state: MotionState, timestamp: int, ctx: KeyedProcessFunction.Context
    ) -> bool:
        """Whether a wall timer finds nothing to do; if so, set the next one.

        The usual case while a device reports: its newest fix has not waited the
        lateness yet, because a newer one came.  Then only the wall timer moves,
        and the state is not written back: a restored state whose wall timer has
        passed counts as having none (:meth:`_schedule`).  Anything else (an
        event timer to move, a fix to release, a rule due) takes the full path.
        """
        event_timer = state.event_timer_ms
        _, wake = self._engine.timers(state, _watermark(ctx))
        if wake is None or wake <= timestamp:
            return False
        self._schedule(state, ctx)
        if state.event_timer_ms != event_timer:
            self._motion.update(freeze(state))
        return True

    def _load(self, device: str, *, create: bool = True) -> MotionState | None:
        """The device's state: the cached copy, else thawed from Flink's state.

        ``None`` when it has none (and ``create`` is off); a state another layout
        wrote starts afresh.
        """
        state = self._states.pop(device, None)
        if state is None:
            frozen = self._motion.value()
            if frozen is None and not create:
                return None
            state = (thaw(frozen) if frozen is not None else None) or MotionState()
            if len(self._states) >= STATE_CACHE_DEVICES:
                self._states.popitem(last=False)
        self._states[device] = state
        return state

    def _schedule(self, state: MotionState, ctx: KeyedProcessFunction.Context) -> None:
        """Register the next event-time and wall timers, unless earlier ones wait."""
        service = ctx.timer_service()
        watermark = _watermark(ctx)
        due, wake = self._engine.timers(state, watermark)
        if due is not None and (watermark is None or due > watermark):
            # One the watermark already passed is the wall timer's to fire.
            due = _step_up(due, EVENT_TIMER_STEP_MS)
            if state.event_timer_ms is None or due < state.event_timer_ms:
                service.register_event_time_timer(due)
                state.event_timer_ms = due

        if wake is not None:
            wake = _step_up(wake, WALL_TIMER_STEP_MS)
            pending = state.wall_timer_ms
            if pending is not None and pending < service.current_processing_time():
                pending = None  # fired already: a restored state can say so
            if pending is None or wake < pending:
                service.register_processing_time_timer(wake)
                state.wall_timer_ms = wake

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
            self._latest_flush_ms = due


def _new_window(latest_ms: int | None, fix_time_ms: int) -> bool:
    """Whether a device's newest fix time entered a new :data:`DEDUP_WINDOW_MS`.

    That is when its remembered positions are pruned: a device keeps between one
    and two windows of them.

    >>> _new_window(None, 5_000), _new_window(3_599_000, 3_600_000)
    (False, True)
    """
    if latest_ms is None:
        return False
    return fix_time_ms // DEDUP_WINDOW_MS != latest_ms // DEDUP_WINDOW_MS


def _watermark(ctx: KeyedProcessFunction.Context) -> int | None:
    """The operator's current watermark, ``None`` before the first one."""
    watermark = int(ctx.timer_service().current_watermark())
    return watermark if watermark > 0 else None


def _step_up(epoch_ms: int, step_ms: int) -> int:
    """The first multiple of ``step_ms`` at or after ``epoch_ms``."""
    return -(-epoch_ms // step_ms) * step_ms
