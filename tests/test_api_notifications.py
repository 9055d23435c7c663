"""Notification rules over the API: ownership, checks, secrets, and the test send."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from pipeline.api.app import ApiContext, create_api
from pipeline.config import parse_networks
from pipeline.notify.webhook import NOT_PUBLIC
from pipeline.ports import free_port
from tests.fixtures.api import Caller, running_api, unique_id
from tests.fixtures.notify import WebhookReceiver

pytestmark = pytest.mark.integration

SECRET = "rule-secret-0123456789abcdef"
RULES = "/api/v1/notifications"
_SHORT_SECRET_HOOK = {"type": "webhook", "url": "https://h.org/", "secret": "x"}


async def _device(client: httpx.AsyncClient, owner: Caller) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/devices",
        json={"uniqueId": unique_id(), "name": "van"},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _group(pool: asyncpg.Pool, owner: Caller, name: str = "vans") -> int:
    group_id = await pool.fetchval(
        "INSERT INTO device_groups (owner_id, name) VALUES ($1, $2) RETURNING id",
        owner.user.id,
        name,
    )
    return int(group_id)


def _rule(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Depot",
        "eventTypes": ["geofenceEnter"],
        "channels": [
            {"type": "web"},
            {"type": "email", "address": "ops@example.com"},
            {"type": "webhook", "url": "https://hooks.example.com/x", "secret": SECRET},
        ],
    }
    body.update(changes)
    return body


async def _create(
    client: httpx.AsyncClient, owner: Caller, **changes: Any
) -> dict[str, Any]:
    response = await client.post(RULES, json=_rule(**changes), headers=owner.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


class TestRuleCrud:
    async def test_create_returns_rule_without_secret(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        device = await _device(api_client, alice)

        response = await api_client.post(
            RULES, json=_rule(devices=[device["id"]]), headers=alice.headers
        )

        assert response.status_code == 201
        rule = response.json()
        assert SECRET not in response.text
        assert rule["ownerId"] == alice.user.id
        assert rule["eventTypes"] == ["geofenceEnter"]
        assert (rule["devices"], rule["groups"], rule["allDevices"]) == (
            [device["id"]],
            [],
            False,
        )
        assert rule["channels"] == [
            {"type": "web"},
            {"type": "email", "address": "ops@example.com"},
            {
                "type": "webhook",
                "url": "https://hooks.example.com/x",
                "hasSecret": True,
            },
        ]
        stored = await api_pool.fetchval(
            "SELECT secret FROM notification_channels WHERE kind = 'webhook'"
        )
        assert stored == SECRET

    async def test_list_get_delete(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        created = await _create(api_client, alice)
        path = f"{RULES}/{created['id']}"

        listed = await api_client.get(RULES, headers=alice.headers)
        fetched = await api_client.get(path, headers=alice.headers)
        deleted = await api_client.delete(path, headers=alice.headers)
        gone = await api_client.get(path, headers=alice.headers)

        assert listed.json() == [created]
        assert fetched.json() == created
        assert deleted.status_code == 204
        assert gone.status_code == 404
        assert gone.json() == {"error": f"no notification rule with id {created['id']}"}

    async def test_group_target_accepted(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        group = await _group(api_pool, alice)

        rule = await _create(api_client, alice, groups=[group])

        assert (rule["groups"], rule["allDevices"]) == ([group], False)

    async def test_unauthenticated_refused(self, api_client: httpx.AsyncClient) -> None:
        response = await api_client.get(RULES)

        assert response.status_code == 401


class TestRuleOwnership:
    async def test_others_rules_invisible(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        alices = await _create(api_client, alice)
        path = f"{RULES}/{alices['id']}"

        listed = await api_client.get(RULES, headers=bob.headers)
        fetched = await api_client.get(path, headers=bob.headers)
        changed = await api_client.put(path, json={"name": "x"}, headers=bob.headers)
        deleted = await api_client.delete(path, headers=bob.headers)
        still = await api_client.get(path, headers=alice.headers)

        assert listed.json() == []
        assert [r.status_code for r in (fetched, changed, deleted)] == [404] * 3
        assert still.json()["name"] == "Depot"

    async def test_admin_sees_and_changes_all(
        self, api_client: httpx.AsyncClient, alice: Caller, admin: Caller
    ) -> None:
        alices = await _create(api_client, alice)
        path = f"{RULES}/{alices['id']}"

        listed = await api_client.get(RULES, headers=admin.headers)
        changed = await api_client.put(
            path, json={"enabled": False}, headers=admin.headers
        )

        assert [rule["id"] for rule in listed.json()] == [alices["id"]]
        assert changed.status_code == 200
        assert changed.json()["enabled"] is False
        assert changed.json()["ownerId"] == alice.user.id

    async def test_others_device_refused(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        bobs = await _device(api_client, bob)

        response = await api_client.post(
            RULES, json=_rule(devices=[bobs["id"], 999_999]), headers=alice.headers
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": f"devices {[bobs['id'], 999_999]} do not exist or are not yours"
        }

    async def test_others_group_refused(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        bobs = await _group(api_pool, bob)
        created = await _create(api_client, alice)

        response = await api_client.put(
            f"{RULES}/{created['id']}", json={"groups": [bobs]}, headers=alice.headers
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": f"groups {[bobs]} do not exist or are not yours"
        }

    async def test_admin_change_checks_owners_devices(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller, admin: Caller
    ) -> None:
        """An admin cannot point Alice's rule at Bob's device: Alice cannot see it."""
        alices = await _create(api_client, alice)
        bobs = await _device(api_client, bob)

        response = await api_client.put(
            f"{RULES}/{alices['id']}",
            json={"devices": [bobs["id"]]},
            headers=admin.headers,
        )

        assert response.status_code == 400
        assert "do not exist or are not yours" in response.json()["error"]


class TestRuleChanges:
    async def test_change_keeps_secret(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        created = await _create(api_client, alice)
        channels = [{"type": "webhook", "url": "https://hooks.example.com/x"}]

        response = await api_client.put(
            f"{RULES}/{created['id']}",
            json={"name": "Depot 2", "channels": channels},
            headers=alice.headers,
        )

        assert response.status_code == 200
        assert response.json()["name"] == "Depot 2"
        assert response.json()["channels"] == [
            {"type": "webhook", "url": "https://hooks.example.com/x", "hasSecret": True}
        ]
        secrets = await api_pool.fetch("SELECT secret FROM notification_channels")
        assert [row["secret"] for row in secrets] == [SECRET]

    async def test_deleted_device_leaves_rule_narrow(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        """Its only device deleted, a rule covers nothing, never everything."""
        device = await _device(api_client, alice)
        created = await _create(api_client, alice, devices=[device["id"]])

        await api_client.delete(
            f"/api/v1/devices/{device['id']}", headers=alice.headers
        )
        rule = (
            await api_client.get(f"{RULES}/{created['id']}", headers=alice.headers)
        ).json()

        assert (rule["devices"], rule["allDevices"]) == ([], False)

    async def test_clearing_targets_covers_all(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        device = await _device(api_client, alice)
        created = await _create(api_client, alice, devices=[device["id"]])

        response = await api_client.put(
            f"{RULES}/{created['id']}", json={"devices": []}, headers=alice.headers
        )

        assert response.json()["allDevices"] is True


class TestRuleBadInput:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (_rule(eventTypes=["teleported"]), "eventTypes has unknown types"),
            ({"name": "x"}, "channels is required"),
            (_rule(channels=[]), "channels must be a non-empty list of channels"),
            (
                _rule(channels=[_SHORT_SECRET_HOOK]),
                r"channels\[0\].secret must be 16 to 256 characters, got 1",
            ),
            (_rule(devices="all"), "devices must be a list of positive integer ids"),
            (_rule(owner=3), r"unknown fields \['owner'\]"),
        ],
    )  # fmt: skip
    async def test_bad_rule_is_400(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        body: dict[str, Any],
        message: str,
    ) -> None:
        response = await api_client.post(RULES, json=body, headers=alice.headers)
        listed = await api_client.get(RULES, headers=alice.headers)

        assert response.status_code == 400
        assert re.match(message, response.json()["error"])
        assert listed.json() == []

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"{not json", "the request body must be JSON"),
            (b"[1, 2]", "the request body must be a JSON object, got list"),
        ],
    )
    async def test_bad_body_is_400(
        self, api_client: httpx.AsyncClient, alice: Caller, content: bytes, message: str
    ) -> None:
        response = await api_client.post(RULES, content=content, headers=alice.headers)

        assert response.status_code == 400
        assert response.json() == {"error": message}

    async def test_huge_body_is_413(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        body = _rule(name="x" * 70_000)

        response = await api_client.post(RULES, json=body, headers=alice.headers)

        assert response.status_code == 413

    async def test_secret_never_logged(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        with capture_logs() as logs:
            created = await _create(api_client, alice)
            await api_client.put(
                f"{RULES}/{created['id']}",
                json={"channels": [{"type": "webhook", "url": "https://h.org/"}]},
                headers=alice.headers,
            )
            listed = await api_client.get(RULES, headers=alice.headers)

        assert SECRET not in repr(logs)
        assert SECRET not in listed.text


class TestDatabaseDown:
    @pytest.fixture
    async def dead_client(
        self, api_redis: aioredis.Redis
    ) -> AsyncIterator[httpx.AsyncClient]:
        dsn = f"postgresql://rastro@127.0.0.1:{free_port()}/rastro"
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
        app = create_api(ApiContext(pool=pool, redis=api_redis))
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as client:
                yield client
        finally:
            await pool.close()

    @pytest.mark.parametrize(
        ("method", "path"), [("GET", RULES), ("POST", RULES), ("GET", f"{RULES}/1")]
    )
    async def test_database_down_is_503(
        self, dead_client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        response = await dead_client.request(
            method, path, json=_rule(), headers={"Authorization": "Bearer t"}
        )

        assert response.status_code == 503
        assert response.json() == {
            "error": "the database is unavailable; try again shortly"
        }


async def _webhook_rule_test_path(
    client: httpx.AsyncClient, caller: Caller, url: str
) -> str:
    """Create an overspeed rule of ``caller`` with a webhook to ``url``; the path of
    its test send."""
    hook = {"type": "webhook", "url": url, "secret": SECRET}
    created = await _create(client, caller, channels=[hook], eventTypes=["overspeed"])
    return f"{RULES}/{created['id']}/test"


class TestTestSend:
    async def test_test_send_reaches_webhook(
        self, api_client: httpx.AsyncClient, api_context: ApiContext, alice: Caller
    ) -> None:
        api_context.webhook_allowed_networks = parse_networks("127.0.0.0/8")
        receiver = WebhookReceiver(fail_first=1)
        async with running_api(receiver.app) as base:
            url = f"{base}/hook"
            path = await _webhook_rule_test_path(api_client, alice, url)
            failed = await api_client.post(path, headers=alice.headers)
            passed = await api_client.post(path, headers=alice.headers)

        assert failed.json() == {
            "webhooks": [{"url": url, "delivered": False, "error": "HTTP 503"}]
        }
        assert passed.json() == {
            "webhooks": [{"url": url, "delivered": True, "error": None}]
        }
        call = receiver.calls[1]
        digest = hmac.new(SECRET.encode(), call.body, hashlib.sha256).hexdigest()
        assert call.headers["x-rastro-signature"] == f"sha256={digest}"
        event = json.loads(call.body)["event"]
        assert (event["type"], event["attributes"]) == ("overspeed", {"test": True})

    async def test_test_send_refuses_a_private_address(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        """The test send is no way into the server's network: loopback is not a
        public address, and the operator has not allowed it here."""
        receiver = WebhookReceiver()
        async with running_api(receiver.app) as base:
            url = f"{base}/hook"
            path = await _webhook_rule_test_path(api_client, alice, url)
            answer = await api_client.post(path, headers=alice.headers)

        assert answer.json() == {
            "webhooks": [{"url": url, "delivered": False, "error": NOT_PUBLIC}]
        }
        assert receiver.calls == []

    async def test_test_send_needs_webhook(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        created = await _create(api_client, alice, channels=[{"type": "web"}])
        path = f"{RULES}/{created['id']}/test"

        mine = await api_client.post(path, headers=alice.headers)
        theirs = await api_client.post(path, headers=bob.headers)

        assert mine.status_code == 400
        assert mine.json() == {"error": "the rule has no webhook channel to test"}
        assert theirs.status_code == 404


async def test_openapi_lists_rules(api_client: httpx.AsyncClient) -> None:
    document = (await api_client.get("/api/v1/openapi.json")).json()

    assert set(document["paths"]["/api/v1/notifications"]) == {"get", "post"}
    assert set(document["paths"]["/api/v1/notifications/{rule_id}"]) == {
        "get",
        "put",
        "delete",
    }
    assert "post" in document["paths"]["/api/v1/notifications/{rule_id}/test"]
