"""A device's :class:`~pipeline.stream.motion.MotionState` as plain tuples.

Flink keeps the state as pickled bytes and the job rewrites it with every fix.
Pickling the ``geo`` dataclasses as they are costs about 150 µs per fix (slotted
dataclasses pickle through :mod:`dataclasses`' generic ``__getstate__``, field by
field, with a class reference per object); the same values as nested tuples of
numbers and strings pickle about twenty times faster.  :func:`freeze` and
:func:`thaw` convert both ways, field by field, with the field lists taken from the
classes themselves.

The tuple starts with :data:`LAYOUT`, a digest of every class's field names.  A
state written by a version of the job whose classes had other fields does not
thaw (:func:`thaw` returns ``None``); the job then starts that device afresh
rather than misreading it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final

from geo.alerts import AlertState, Speeding
from geo.filtering import FilterState
from geo.geofences import Crossing, MembershipState, Stay
from geo.trips import Idle, Mark, Record, Stop, Trip, TripState
from pipeline.stream.motion import MotionState

__all__ = ["LAYOUT", "freeze", "thaw"]


def _names(cls: type) -> tuple[str, ...]:
    return tuple(item.name for item in dataclasses.fields(cls))


_FILTER = _names(FilterState)
_TRIPS = _names(TripState)
_ALERTS = _names(AlertState)
_MOTION = _names(MotionState)
_RECORDS: Final = {"Trip": Trip, "Stop": Stop, "Idle": Idle}
_RECORD_FIELDS = {name: _names(cls) for name, cls in _RECORDS.items()}
_MARKS = frozenset({"last", "since", "candidate", "quiet", "idle"})


def _layout() -> str:
    parts = [_FILTER, _TRIPS, _ALERTS, _MOTION, *_RECORD_FIELDS.values()]
    parts += [Mark._fields, Speeding._fields, Crossing._fields, Stay._fields]
    parts.append(_names(MembershipState))
    text = "|".join(",".join(names) for names in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Digest of the fields of every class in a frozen state.
LAYOUT: Final = _layout()


def freeze(state: MotionState) -> tuple[Any, ...]:
    """The state as nested tuples of plain values, :data:`LAYOUT` first."""
    values = []
    for name in _MOTION:
        value = getattr(state, name)
        freezer = _FREEZERS.get(name)
        values.append(value if freezer is None else freezer(value))
    return (LAYOUT, *values)


def thaw(frozen: tuple[Any, ...]) -> MotionState | None:
    """The state :func:`freeze` made; ``None`` if another layout wrote it."""
    if not frozen or frozen[0] != LAYOUT:
        return None
    values = [
        value if thawer is None else thawer(value)
        for thawer, value in zip(_THAWER_LIST, frozen[1:], strict=True)
    ]
    return MotionState(*values)


_GETTERS: dict[tuple[str, ...], Callable[[object], tuple[Any, ...]]] = {}


def _plain(obj: object, names: tuple[str, ...]) -> tuple[Any, ...]:
    getter = _GETTERS.get(names)
    if getter is None:
        getter = _GETTERS[names] = attrgetter(*names)
    return getter(obj)


def _tuple_or_none(value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


_MARK_AT = tuple(i for i, name in enumerate(_TRIPS) if name in _MARKS)


def _freeze_trips(state: TripState) -> tuple[Any, ...]:
    values = list(_plain(state, _TRIPS))
    for i in _MARK_AT:
        values[i] = _tuple_or_none(values[i])
    return tuple(values)


def _thaw_trips(values: tuple[Any, ...]) -> TripState:
    fields = list(values)
    for i in _MARK_AT:
        if fields[i] is not None:
            fields[i] = Mark(*fields[i])
    return TripState(*fields)


def _freeze_alerts(state: AlertState) -> tuple[Any, ...]:
    values = list(_plain(state, _ALERTS))
    speeding = _ALERTS.index("speeding")
    values[speeding] = _tuple_or_none(values[speeding])
    return tuple(values)


def _thaw_alerts(values: tuple[Any, ...]) -> AlertState:
    fields = list(values)
    speeding = _ALERTS.index("speeding")
    if fields[speeding] is not None:
        fields[speeding] = Speeding(*fields[speeding])
    return AlertState(*fields)


def _freeze_membership(state: MembershipState) -> tuple[Any, ...]:
    return (
        {k: tuple(v) for k, v in state.inside.items()},
        {k: tuple(v) for k, v in state.pending.items()},
        state.last_time_ms,
    )


def _thaw_membership(values: tuple[Any, ...]) -> MembershipState:
    inside, pending, last = values
    return MembershipState(
        {k: Stay(*v) for k, v in inside.items()},
        {k: Crossing(*v) for k, v in pending.items()},
        last,
    )


def _freeze_records(records: list[Record]) -> tuple[Any, ...]:
    return tuple(
        (type(r).__name__, _plain(r, _RECORD_FIELDS[type(r).__name__])) for r in records
    )


def _thaw_records(values: tuple[Any, ...]) -> list[Record]:
    return [_RECORDS[kind](*fields) for kind, fields in values]


_FREEZERS: dict[str, Callable[[Any], Any]] = {
    "filter": lambda state: _plain(state, _FILTER),
    "trips": _freeze_trips,
    "alerts": _freeze_alerts,
    "membership": _freeze_membership,
    "records": _freeze_records,
}

_THAWERS: dict[str, Callable[[Any], Any]] = {
    "filter": lambda values: FilterState(*values),
    "trips": _thaw_trips,
    "alerts": _thaw_alerts,
    "membership": _thaw_membership,
    "records": _thaw_records,
}

_THAWER_LIST = tuple(_THAWERS.get(name) for name in _MOTION)
