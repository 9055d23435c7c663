"""Routes of notification rules: which events reach a user, for which devices, and
through which channels.

A user manages only their own rules (an administrator sees and changes all), and
a rule may name only devices and groups its owner may see.  A rule outside the
caller's view answers 404.  Webhook secrets go in and never come out: responses
say ``"hasSecret": true`` instead, and a change that lists a webhook without its
secret keeps the secret it had for that URL.

``POST /notifications/{id}/test`` posts a sample event, once and without retries,
to the rule's webhooks and says what each answered, so a user can check a
receiver and its secret.  E-mail is sent by the notifier alone (it holds the SMTP
settings), so it is not part of the test.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geo.events import EVENT_TYPES
from pipeline.api.errors import ApiError
from pipeline.api.live import LiveHub
from pipeline.api.openapi import Endpoint
from pipeline.api.routes import MAX_JSON_BYTES, caller, context_of, view_of
from pipeline.model import Event
from pipeline.notify import store
from pipeline.notify.channels import Delivery, delivery_key
from pipeline.notify.messages import event_document
from pipeline.notify.rules import (
    Rule,
    RuleError,
    RuleSpec,
    WebhookChannel,
    parse_rule,
)
from pipeline.notify.webhook import WebhookSender

__all__ = [
    "ENDPOINTS",
    "create_rule",
    "delete_rule",
    "get_rule",
    "list_rules",
    "send_test_event",
    "update_rule",
]

TEST_TIMEOUT_S = 5.0


async def list_rules(request: Request) -> Response:
    """The caller's notification rules (every rule for administrators)."""
    found = await store.list_rules(context_of(request).pool, view_of(caller(request)))
    return JSONResponse([rule.to_json() for rule in found])


async def create_rule(request: Request) -> Response:
    """Create a rule owned by the caller."""
    spec = _spec(await _json_object(request))
    user = caller(request)
    pool = context_of(request).pool
    await _check_targets(request, view_of(user), spec)

    rule = await store.create_rule(pool, user.id, spec)
    _hub(request).rules_changed(user.id)
    return JSONResponse(rule.to_json(), status_code=201)


async def get_rule(request: Request) -> Response:
    """One rule in the caller's view."""
    return JSONResponse((await _visible_rule(request)).to_json())


async def update_rule(request: Request) -> Response:
    """Change a rule: the fields the body holds replace the current ones."""
    body = await _json_object(request)
    current = await _visible_rule(request)
    spec = _spec(body, current)
    pool = context_of(request).pool
    await _check_targets(request, await store.owner_view(pool, current.owner_id), spec)

    rule = await store.update_rule(pool, current.id, view_of(caller(request)), spec)
    if rule is None:  # deleted meanwhile
        raise _no_such_rule(request)
    _hub(request).rules_changed(rule.owner_id)
    return JSONResponse(rule.to_json())


async def delete_rule(request: Request) -> Response:
    """Remove a rule."""
    owner = await store.delete_rule(
        context_of(request).pool, _rule_id(request), view_of(caller(request))
    )
    if owner is None:
        raise _no_such_rule(request)
    _hub(request).rules_changed(owner)
    return Response(status_code=204)


async def send_test_event(request: Request) -> Response:
    """Post a sample event once to each of the rule's webhooks; report the answers."""
    rule = await _visible_rule(request)
    webhooks = [c for c in rule.channels if isinstance(c, WebhookChannel)]
    if not webhooks:
        raise ApiError(400, "the rule has no webhook channel to test")

    event = _sample_event(rule)
    sender = WebhookSender(
        timeout_s=TEST_TIMEOUT_S,
        allowed_networks=context_of(request).webhook_allowed_networks,
    )
    results = []
    try:
        for channel in webhooks:
            delivery = Delivery(
                rule_id=rule.id,
                rule_name=rule.name,
                channel=channel,
                device_name="Rastro test",
                event=event_document(event),
                key=delivery_key(rule.id, channel, event),
            )
            failure = await sender.post(delivery)
            results.append(
                {
                    "url": channel.url,
                    "delivered": failure is None,
                    "error": None if failure is None else failure.reason,
                }
            )
    finally:
        await sender.aclose()
    return JSONResponse({"webhooks": results})


def _sample_event(rule: Rule) -> Event:
    # A type the rule listens to, on a device that cannot exist, marked as a test.
    event = Event(
        device="rastro-test",
        event_time_ms=int(time.time() * 1000),
        type=min(rule.event_types) if rule.event_types else "alarm",
    )
    event.attributes["test"] = "true"
    return event


# -- checks ----------------------------------------------------------------------------


def _spec(body: dict[str, Any], current: Rule | None = None) -> RuleSpec:
    try:
        return parse_rule(body, current)
    except RuleError as error:
        raise ApiError(400, str(error)) from error


async def _check_targets(request: Request, view: int | None, spec: RuleSpec) -> None:
    """Refuse devices and groups the rule's owner may not see (or that are gone)."""
    if not spec.devices and not spec.groups:
        return
    devices, groups = await store.foreign_targets(
        context_of(request).pool, view, spec.devices, spec.groups
    )
    if devices:
        raise ApiError(400, f"devices {devices} do not exist or are not yours")
    if groups:
        raise ApiError(400, f"groups {groups} do not exist or are not yours")


async def _visible_rule(request: Request) -> Rule:
    rule = await store.get_rule(
        context_of(request).pool, _rule_id(request), view_of(caller(request))
    )
    if rule is None:
        raise _no_such_rule(request)
    return rule


def _rule_id(request: Request) -> int:
    return int(request.path_params["rule_id"])


def _no_such_rule(request: Request) -> ApiError:
    return ApiError(404, f"no notification rule with id {_rule_id(request)}")


def _hub(request: Request) -> LiveHub:
    hub: LiveHub = request.app.state.hub
    return hub


async def _json_object(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            message = f"the request body must be at most {MAX_JSON_BYTES} bytes"
            raise ApiError(413, message)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "the request body must be JSON") from error
    if not isinstance(body, dict):
        kind = type(body).__name__
        raise ApiError(400, f"the request body must be a JSON object, got {kind}")
    return body


# -- route table -----------------------------------------------------------------------

_STRING = {"type": "string"}
_IDS = {"type": "array", "items": {"type": "integer"}}
_CHANNEL = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"type": {"const": "web"}},
            "required": ["type"],
        },
        {
            "type": "object",
            "properties": {"type": {"const": "email"}, "address": _STRING},
            "required": ["type", "address"],
        },
        {
            "type": "object",
            "properties": {
                "type": {"const": "webhook"},
                "url": _STRING,
                "secret": {
                    **_STRING,
                    "description": (
                        "HMAC-SHA256 key, 16 to 256 characters; never returned. "
                        "Left out on a change, the current secret of that URL stays."
                    ),
                },
            },
            "required": ["type", "url"],
        },
    ]
}
_RULE_BODY = {
    "type": "object",
    "properties": {
        "name": _STRING,
        "enabled": {"type": "boolean"},
        "eventTypes": {
            "type": "array",
            "items": {"enum": sorted(EVENT_TYPES)},
            "description": "event types to announce; empty: every type",
        },
        "devices": {**_IDS, "description": "device ids; with groups empty: all"},
        "groups": {**_IDS, "description": "device group ids"},
        "channels": {"type": "array", "items": _CHANNEL, "minItems": 1},
    },
    "required": ["name", "channels"],
}
_RULE_PATH = "/notifications/{rule_id:int}"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/notifications", list_rules, "The caller's notification rules"),
    Endpoint(
        "POST",
        "/notifications",
        create_rule,
        "Create a notification rule",
        status=201,
        body=_RULE_BODY,
        errors=(400, 413),
    ),
    Endpoint("GET", _RULE_PATH, get_rule, "One notification rule", errors=(404,)),
    Endpoint(
        "PUT",
        _RULE_PATH,
        update_rule,
        "Change a notification rule (only the fields given)",
        body={**_RULE_BODY, "required": []},
        errors=(400, 404, 413),
    ),
    Endpoint(
        "DELETE",
        _RULE_PATH,
        delete_rule,
        "Remove a notification rule",
        status=204,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        _RULE_PATH + "/test",
        send_test_event,
        "Post a sample event once to the rule's webhooks and report their answers",
        errors=(400, 404),
    ),
)
