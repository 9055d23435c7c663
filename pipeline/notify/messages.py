"""Events as they travel on: decoded from Kafka, and their JSON form.

An event arrives on the ``events`` topic as a protobuf ``rastro.v1.Event``.  Its
JSON form, shared by the live WebSocket, webhooks and e-mails, mirrors the one of
positions: ``uniqueId``, ``type``, ``time`` (ISO-8601 UTC), ``latitude`` and
``longitude`` (degrees, when the event has a place) and ``attributes``, whose
values travel JSON-encoded inside the protobuf map and come out as the numbers,
strings and booleans they were.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.model import Event, format_time_ms

__all__ = ["EventUndecodable", "decode_event", "event_document"]


class EventUndecodable(ValueError):
    """A payload on the events topic is not a protobuf ``Event``."""


def decode_event(payload: bytes) -> Event:
    """The ``Event`` in ``payload``; :class:`EventUndecodable` when it is none."""
    event = Event()
    try:
        event.ParseFromString(payload)
    except Exception as error:  # protobuf's DecodeError has no public import path
        message = f"not a protobuf Event ({len(payload)} bytes)"
        raise EventUndecodable(message) from error
    if not event.device or not event.type:
        message = "an Event must name its device and type"
        raise EventUndecodable(message)
    return event


def event_document(event: Event) -> dict[str, Any]:
    """The JSON form of an event; absent coordinates are left out."""
    document: dict[str, Any] = {
        "uniqueId": event.device,
        "type": event.type,
        "time": format_time_ms(event.event_time_ms),
    }
    if event.HasField("latitude") and event.HasField("longitude"):
        document["latitude"] = event.latitude
        document["longitude"] = event.longitude
    document["attributes"] = {
        key: _attribute(value) for key, value in sorted(event.attributes.items())
    }
    return document


def _attribute(value: str) -> Any:
    # Values are JSON-encoded by every producer; one that is not is kept as text
    # rather than losing the event.
    try:
        return json.loads(value)
    except ValueError:
        return value
