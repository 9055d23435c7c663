"""Notification rules: which events a user wants to hear about, and through what.

A rule has a name, the event types it listens to (:data:`geo.events.EVENT_TYPES`;
none listed means every type), the devices and device groups it covers (none
listed means every device its owner may see) and one or more channels:

- ``{"type": "web"}``: the dashboards; the live WebSocket marks the event.
- ``{"type": "email", "address": "ops@example.com"}``: e-mail over SMTP.
- ``{"type": "webhook", "url": "https://...", "secret": "..."}``: an HTTP POST of
  JSON signed with HMAC-SHA256 under the shared ``secret``.

:func:`parse_rule` checks a rule's JSON form (as the API receives it) and raises
:class:`RuleError` with a message naming the field.  :meth:`Rule.to_json` is the
form the API answers with: a webhook's secret is never in it, only
``"hasSecret": true``.  Channel objects keep the secret out of their ``repr`` too,
so it cannot reach a log line by accident.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from geo.events import EVENT_TYPES

__all__ = [
    "Channel",
    "EmailChannel",
    "Rule",
    "RuleError",
    "RuleSpec",
    "WebChannel",
    "WebhookChannel",
    "parse_rule",
]

MAX_NAME: Final = 128
MAX_CHANNELS: Final = 10
MAX_DEVICES: Final = 1000
MAX_GROUPS: Final = 100
MAX_URL: Final = 2048
MAX_ADDRESS: Final = 254
MIN_SECRET: Final = 16
MAX_SECRET: Final = 256

_FIELDS = frozenset({"name", "enabled", "eventTypes", "devices", "groups", "channels"})
# One address, no display name: local@domain.tld, no spaces, no line breaks (which
# would let a rule inject e-mail headers).
_ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


class RuleError(ValueError):
    """A rule's JSON form cannot be used; the message names the field and why."""


@dataclass(frozen=True)
class WebChannel:
    """Show the event in the dashboards (marked on the live WebSocket)."""

    kind: ClassVar[str] = "web"

    def to_json(self) -> dict[str, Any]:
        """The API form."""
        return {"type": self.kind}


@dataclass(frozen=True)
class EmailChannel:
    """Send an e-mail to ``address``."""

    address: str
    kind: ClassVar[str] = "email"

    def to_json(self) -> dict[str, Any]:
        """The API form."""
        return {"type": self.kind, "address": self.address}


@dataclass(frozen=True)
class WebhookChannel:
    """POST signed JSON to ``url``; ``secret`` is the HMAC key (never shown)."""

    url: str
    secret: str = field(repr=False)
    kind: ClassVar[str] = "webhook"

    @property
    def host(self) -> str:
        """The URL's host, what logs may name (the URL itself may be a credential)."""
        return urlsplit(self.url).hostname or "?"

    def to_json(self) -> dict[str, Any]:
        """The API form: the URL, and only whether a secret is set."""
        return {"type": self.kind, "url": self.url, "hasSecret": bool(self.secret)}


Channel = WebChannel | EmailChannel | WebhookChannel


@dataclass(frozen=True)
class RuleSpec:
    """A rule as asked for, checked but not stored yet.

    ``event_types`` empty means every type.  ``all_devices`` is true when the
    rule covers every device its owner may see: when it was given no ``devices``
    and no ``groups`` (ids).
    """

    name: str
    enabled: bool
    event_types: frozenset[str]
    all_devices: bool
    devices: tuple[int, ...]
    groups: tuple[int, ...]
    channels: tuple[Channel, ...]


@dataclass(frozen=True)
class Rule:
    """A stored rule of one user.

    ``all_devices`` is decided when the rule is written: a rule that named devices
    whose rows were deleted since covers nothing, not everything.
    """

    id: int
    owner_id: int
    name: str
    enabled: bool
    event_types: frozenset[str]
    all_devices: bool
    devices: tuple[int, ...]
    groups: tuple[int, ...]
    channels: tuple[Channel, ...]
    created_at: datetime
    updated_at: datetime

    def spec(self) -> RuleSpec:
        """What the rule asks for, e.g. to change part of it."""
        return RuleSpec(
            self.name,
            self.enabled,
            self.event_types,
            self.all_devices,
            self.devices,
            self.groups,
            self.channels,
        )

    def accepts(self, event_type: str) -> bool:
        """Whether an event of this type is one the rule listens to."""
        return not self.event_types or event_type in self.event_types

    def to_json(self) -> dict[str, Any]:
        """The API JSON form, without any webhook secret."""
        return {
            "id": self.id,
            "ownerId": self.owner_id,
            "name": self.name,
            "enabled": self.enabled,
            "eventTypes": sorted(self.event_types),
            "allDevices": self.all_devices,
            "devices": list(self.devices),
            "groups": list(self.groups),
            "channels": [channel.to_json() for channel in self.channels],
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


def parse_rule(body: Mapping[str, Any], current: Rule | None = None) -> RuleSpec:
    """Check a rule's JSON form; with ``current``, a change to that rule.

    Without ``current`` (a new rule) ``name`` and ``channels`` are required.  With
    it, a field the body lacks keeps its current value, and a webhook listed
    without ``secret`` keeps the secret it has now for the same URL.  Giving
    ``devices`` or ``groups`` decides anew whether the rule covers every device
    (both empty) or only those.  Raises :class:`RuleError`.
    """
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        message = f"unknown fields {unknown}; a rule has {sorted(_FIELDS)}"
        raise RuleError(message)
    if current is None:
        for required in ("name", "channels"):
            if required not in body:
                message = f"{required} is required"
                raise RuleError(message)

    now = _NEW if current is None else current.spec()
    devices = (
        _ids("devices", body["devices"], MAX_DEVICES)
        if "devices" in body
        else now.devices
    )
    groups = (
        _ids("groups", body["groups"], MAX_GROUPS) if "groups" in body else now.groups
    )
    retargeted = "devices" in body or "groups" in body
    return RuleSpec(
        name=_name(body["name"]) if "name" in body else now.name,
        enabled=_enabled(body["enabled"]) if "enabled" in body else now.enabled,
        event_types=(
            _event_types(body["eventTypes"])
            if "eventTypes" in body
            else now.event_types
        ),
        all_devices=not (devices or groups) if retargeted else now.all_devices,
        devices=devices,
        groups=groups,
        channels=(
            _channels(body["channels"], now.channels)
            if "channels" in body
            else now.channels
        ),
    )


_NEW = RuleSpec("", True, frozenset(), True, (), (), ())


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        message = f"name must be a non-empty string, got {value!r}"
        raise RuleError(message)
    if len(value) > MAX_NAME:
        message = f"name must be at most {MAX_NAME} characters, got {len(value)}"
        raise RuleError(message)
    return value.strip()


def _enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        message = f"enabled must be true or false, got {value!r}"
        raise RuleError(message)
    return value


def _event_types(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        message = f"eventTypes must be a list of event types, got {value!r}"
        raise RuleError(message)
    unknown = [kind for kind in value if kind not in EVENT_TYPES]
    if unknown:
        message = (
            f"eventTypes has unknown types {unknown!r}; "
            f"known types are {sorted(EVENT_TYPES)}"
        )
        raise RuleError(message)
    return frozenset(value)


def _ids(name: str, value: Any, limit: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) and item > 0
        for item in value
    ):
        message = f"{name} must be a list of positive integer ids, got {value!r}"
        raise RuleError(message)
    if len(value) > limit:
        message = f"{name} may list at most {limit} ids, got {len(value)}"
        raise RuleError(message)
    return tuple(sorted(set(value)))


def _channels(value: Any, known: Sequence[Channel]) -> tuple[Channel, ...]:
    if not isinstance(value, list) or not value:
        message = f"channels must be a non-empty list of channels, got {value!r}"
        raise RuleError(message)
    if len(value) > MAX_CHANNELS:
        message = f"channels may list at most {MAX_CHANNELS}, got {len(value)}"
        raise RuleError(message)
    secrets = {c.url: c.secret for c in known if isinstance(c, WebhookChannel)}
    channels = tuple(_channel(index, raw, secrets) for index, raw in enumerate(value))
    if len({_destination(channel) for channel in channels}) != len(channels):
        message = "channels lists the same destination twice"
        raise RuleError(message)
    return channels


def _destination(channel: Channel) -> tuple[str, str]:
    if isinstance(channel, EmailChannel):
        return (channel.kind, channel.address.lower())
    if isinstance(channel, WebhookChannel):
        return (channel.kind, channel.url)
    return (channel.kind, "")


def _channel(index: int, raw: Any, secrets: Mapping[str, str]) -> Channel:
    where = f"channels[{index}]"
    if not isinstance(raw, dict):
        message = f"{where} must be an object with a type, got {raw!r}"
        raise RuleError(message)
    kind = raw.get("type")
    expected = {"web": {"type"}, "email": {"type", "address"}}
    expected["webhook"] = {"type", "url", "secret"}
    if not isinstance(kind, str) or kind not in expected:
        message = f"{where}.type must be 'web', 'email' or 'webhook', got {kind!r}"
        raise RuleError(message)
    unknown = sorted(set(raw) - expected[kind])
    if unknown:
        message = f"{where} has unknown fields {unknown} for a {kind} channel"
        raise RuleError(message)

    if kind == "web":
        return WebChannel()
    if kind == "email":
        return EmailChannel(_address(where, raw.get("address")))
    url = _url(where, raw.get("url"))
    return WebhookChannel(url, _secret(where, raw.get("secret"), secrets.get(url)))


def _address(where: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_ADDRESS:
        message = f"{where}.address must be an e-mail address, got {value!r}"
        raise RuleError(message)
    address = value.strip()
    if not _ADDRESS.fullmatch(address):
        message = f"{where}.address must be one e-mail address, got {value!r}"
        raise RuleError(message)
    return address


def _url(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_URL:
        message = f"{where}.url must be an http(s) URL of at most {MAX_URL} characters"
        raise RuleError(message)
    url = value.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError as error:
        message = f"{where}.url is not a valid URL: {error}"
        raise RuleError(message) from error
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        message = f"{where}.url must be an http:// or https:// URL with a host"
        raise RuleError(message)
    if parts.username is not None or port == 0:
        message = f"{where}.url must not carry user:password@ or port 0"
        raise RuleError(message)
    return url


def _secret(where: str, value: Any, kept: str | None) -> str:
    # The value is never echoed in a message: it is a secret.
    if value is None and kept is not None:
        return kept
    if not isinstance(value, str):
        message = (
            f"{where}.secret is required: a string of {MIN_SECRET} to "
            f"{MAX_SECRET} characters shared with the receiver"
        )
        raise RuleError(message)
    if not MIN_SECRET <= len(value) <= MAX_SECRET:
        message = (
            f"{where}.secret must be {MIN_SECRET} to {MAX_SECRET} characters, "
            f"got {len(value)}"
        )
        raise RuleError(message)
    return value
