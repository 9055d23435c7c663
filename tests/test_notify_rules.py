"""Notification rules: their JSON form, its checks, and what never shows a secret."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from geo.events import EVENT_TYPES
from pipeline.model import Event
from pipeline.notify.messages import EventUndecodable, decode_event, event_document
from pipeline.notify.rules import (
    EmailChannel,
    Rule,
    RuleError,
    WebChannel,
    WebhookChannel,
    parse_rule,
)
from pipeline.notify.store import WebRule

SECRET = "s3cret-shared-with-the-receiver"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Depot",
        "eventTypes": ["geofenceEnter", "geofenceExit"],
        "devices": [3, 1, 3],
        "channels": [
            {"type": "web"},
            {"type": "email", "address": "ops@example.com"},
            {"type": "webhook", "url": "https://hooks.example.com/x", "secret": SECRET},
        ],
    }
    body.update(changes)
    return body


def _hook(url: str, secret: str | None = SECRET) -> dict[str, Any]:
    """A body with one webhook channel."""
    channel = {"type": "webhook", "url": url}
    if secret is not None:
        channel["secret"] = secret
    return {"channels": [channel]}


def _rule(**changes: Any) -> Rule:
    spec = parse_rule(_body())
    fields: dict[str, Any] = {
        "id": 7,
        "owner_id": 2,
        "name": spec.name,
        "enabled": spec.enabled,
        "event_types": spec.event_types,
        "all_devices": spec.all_devices,
        "devices": spec.devices,
        "groups": spec.groups,
        "channels": spec.channels,
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(changes)
    return Rule(**fields)


class TestParseRule:
    def test_parse_full_rule(self) -> None:
        spec = parse_rule(_body())

        assert spec.name == "Depot"
        assert spec.enabled is True
        assert spec.event_types == {"geofenceEnter", "geofenceExit"}
        assert spec.devices == (1, 3)
        assert spec.groups == ()
        assert spec.all_devices is False
        assert spec.channels == (
            WebChannel(),
            EmailChannel("ops@example.com"),
            WebhookChannel("https://hooks.example.com/x", SECRET),
        )

    def test_parse_no_targets_means_all_devices(self) -> None:
        body = _body()
        del body["devices"]

        spec = parse_rule(body)

        assert spec.all_devices is True
        assert spec.devices == ()

    def test_parse_no_event_types_means_all(self) -> None:
        body = _body()
        del body["eventTypes"]

        assert parse_rule(body).event_types == frozenset()

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"name": " "}, "name must be a non-empty string"),
            ({"name": "x" * 129}, "name must be at most 128 characters, got 129"),
            ({"enabled": "yes"}, "enabled must be true or false, got 'yes'"),
            ({"eventTypes": ["teleported"]}, r"eventTypes has unknown types \['tel"),
            ({"eventTypes": "alarm"}, "eventTypes must be a list of event types"),
            ({"eventTypes": [{}]}, "eventTypes must be a list of event types"),
            ({"channels": [{"type": []}]}, r"channels\[0\].type must be 'web', 'e"),
            ({"devices": [1, "2"]}, "devices must be a list of positive integer ids"),
            ({"devices": [True]}, "devices must be a list of positive integer ids"),
            ({"groups": [0]}, "groups must be a list of positive integer ids"),
            ({"devices": list(range(1, 1002))}, "devices may list at most 1000 ids"),
            ({"channels": []}, "channels must be a non-empty list of channels"),
            ({"channels": [{"type": "sms"}]}, r"channels\[0\].type must be 'web', 'e"),
            ({"channels": ["web"]}, r"channels\[0\] must be an object with a type"),
            (
                {"channels": [{"type": "web", "url": "https://x.org"}]},
                r"channels\[0\] has unknown fields \['url'\] for a web channel",
            ),
            (
                {"channels": [{"type": "email", "address": "a@b.c\r\nBcc: x@y.z"}]},
                r"channels\[0\].address must be one e-mail address",
            ),
            (
                {"channels": [{"type": "email", "address": "not-an-address"}]},
                r"channels\[0\].address must be one e-mail address",
            ),
            (
                _hook("ftp://x.org/"),
                r"channels\[0\].url must be an http:// or https:// URL with a host",
            ),
            (_hook("https://x.org:99999/"), r"channels\[0\].url is not a valid URL"),
            (
                _hook("https://u:p@x.org/"),
                r"channels\[0\].url must not carry user:password@",
            ),
            (_hook("https://x.org/", None), r"channels\[0\].secret is required"),
            (
                _hook("https://x.org/", "short"),
                r"channels\[0\].secret must be 16 to 256 characters, got 5",
            ),
            (
                {"channels": [{"type": "web"}, {"type": "web"}]},
                "channels lists the same destination twice",
            ),
            (
                {
                    "channels": [
                        {"type": "email", "address": "a@b.org"},
                        {"type": "email", "address": "A@b.org"},
                    ]
                },
                "channels lists the same destination twice",
            ),
            ({"colour": "red"}, r"unknown fields \['colour'\]"),
        ],
    )  # fmt: skip
    def test_parse_bad_field_named(self, changes: dict[str, Any], message: str) -> None:
        with pytest.raises(RuleError, match=message):
            parse_rule(_body(**changes))

    @pytest.mark.parametrize("missing", ["name", "channels"])
    def test_parse_new_rule_needs_field(self, missing: str) -> None:
        body = _body()
        del body[missing]

        with pytest.raises(RuleError, match=f"{missing} is required"):
            parse_rule(body)

    def test_parse_secret_never_in_message(self) -> None:
        wrong = "x" * 300
        channel = {"type": "webhook", "url": "https://x.org/", "secret": wrong}

        with pytest.raises(RuleError) as raised:
            parse_rule(_body(channels=[channel]))

        assert wrong not in str(raised.value)


class TestChangeRule:
    def test_change_keeps_what_body_lacks(self) -> None:
        current = _rule()

        spec = parse_rule({"name": "Depot 2"}, current)

        assert spec.name == "Depot 2"
        assert spec.channels == current.channels
        assert spec.devices == current.devices
        assert spec.event_types == current.event_types

    def test_change_webhook_without_secret_keeps_it(self) -> None:
        current = _rule()
        channels = [{"type": "webhook", "url": "https://hooks.example.com/x"}]

        spec = parse_rule({"channels": channels}, current)

        assert spec.channels == (WebhookChannel("https://hooks.example.com/x", SECRET),)

    def test_change_webhook_new_url_needs_secret(self) -> None:
        channels = [{"type": "webhook", "url": "https://other.example.com/x"}]

        with pytest.raises(RuleError, match=r"channels\[0\].secret is required"):
            parse_rule({"channels": channels}, _rule())

    def test_change_targets_decides_all_devices(self) -> None:
        current = _rule()

        cleared = parse_rule({"devices": []}, current)
        renamed = parse_rule({"name": "n"}, _rule(devices=(), all_devices=False))

        assert cleared.all_devices is True
        # A rule whose devices were all deleted stays narrow when renamed.
        assert renamed.all_devices is False


class TestRuleJson:
    def test_json_hides_secret(self) -> None:
        document = _rule().to_json()

        assert SECRET not in repr(document)
        assert document["channels"][2] == {
            "type": "webhook",
            "url": "https://hooks.example.com/x",
            "hasSecret": True,
        }
        assert document["eventTypes"] == ["geofenceEnter", "geofenceExit"]
        assert document["devices"] == [1, 3]
        assert document["allDevices"] is False

    def test_repr_hides_secret(self) -> None:
        assert SECRET not in repr(_rule())
        assert SECRET not in repr(parse_rule(_body()))

    def test_webhook_host_for_logs(self) -> None:
        channel = WebhookChannel("https://hooks.example.com:8443/t/abc?k=v", SECRET)

        assert channel.host == "hooks.example.com"

    @pytest.mark.parametrize(
        ("event_type", "accepted"), [("geofenceEnter", True), ("alarm", False)]
    )
    def test_rule_accepts_listed_types(self, event_type: str, accepted: bool) -> None:
        assert _rule().accepts(event_type) is accepted

    def test_rule_without_types_accepts_all(self) -> None:
        rule = _rule(event_types=frozenset())

        assert all(rule.accepts(kind) for kind in EVENT_TYPES)


class TestWebRule:
    def test_web_rule_matches_device_and_type(self) -> None:
        rule = WebRule(1, "r", frozenset({"alarm"}), frozenset({"a"}))

        assert rule.matches("a", "alarm")
        assert not rule.matches("b", "alarm")
        assert not rule.matches("a", "overspeed")

    def test_web_rule_all_devices(self) -> None:
        rule = WebRule(1, "r", frozenset(), None)

        assert rule.matches("anything", "idle")


class TestEventDocument:
    def test_event_document_decodes_attributes(self) -> None:
        event = Event(
            device="v1",
            event_time_ms=1_772_352_000_000,
            type="geofenceEnter",
            latitude=48.137,
            longitude=11.575,
        )
        event.attributes["geofence"] = "3"
        event.attributes["name"] = '"Depot"'
        event.attributes["raw"] = "not json"

        document = event_document(decode_event(event.SerializeToString()))

        assert document == {
            "uniqueId": "v1",
            "type": "geofenceEnter",
            "time": "2026-03-01T08:00:00Z",
            "latitude": 48.137,
            "longitude": 11.575,
            "attributes": {"geofence": 3, "name": "Depot", "raw": "not json"},
        }

    def test_event_document_without_place(self) -> None:
        event = Event(device="v1", event_time_ms=1_772_352_000_500, type="alarm")

        document = event_document(event)

        assert "latitude" not in document
        assert document["time"] == "2026-03-01T08:00:00.500Z"

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            (b"\xff\xff\xff garbage", r"not a protobuf Event \(11 bytes\)"),
            (Event(type="alarm").SerializeToString(), "must name its device and type"),
        ],
    )
    def test_decode_event_refuses(self, payload: bytes, message: str) -> None:
        with pytest.raises(EventUndecodable, match=message):
            decode_event(payload)
