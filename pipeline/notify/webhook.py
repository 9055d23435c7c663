"""Webhooks: an HTTP POST of JSON, signed with the rule's shared secret.

The body is one JSON object::

    {"id": "<delivery key>", "timestamp": 1772352000,
     "rule": {"id": 3, "name": "Depot"},
     "device": {"uniqueId": "356307042441013", "name": "Van 12"},
     "event": {"uniqueId": ..., "type": "geofenceEnter", "time": ..., ...}}

and the headers say who signed it and when:

- ``X-Rastro-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes under
  the shared secret.
- ``X-Rastro-Timestamp``: the Unix time (seconds) of this attempt, also inside the
  signed body, so a receiver that refuses stale timestamps (say, older than five
  minutes) cannot be fed an old request again.
- ``X-Rastro-Delivery``: the ``id``, the same for every attempt and every re-read
  of the event, so a receiver can drop duplicates (delivery is at least once).

A 2xx answer is success.  A timeout, a connection failure, 408, 425, 429 or a 5xx
is tried again (see :mod:`pipeline.notify.channels`); any other answer (redirects
are not followed) is final.  Failures are described by status code or exception
name only: neither the URL nor the secret ever reaches a log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from typing import Final

import httpx

from pipeline.notify.channels import Delivery, Failure
from pipeline.notify.rules import WebhookChannel

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookSender",
    "sign",
    "webhook_body",
]

SIGNATURE_HEADER: Final = "X-Rastro-Signature"
TIMESTAMP_HEADER: Final = "X-Rastro-Timestamp"
DELIVERY_HEADER: Final = "X-Rastro-Delivery"
USER_AGENT: Final = "Rastro-Webhook/1"
_RETRY_STATUSES: Final = frozenset({408, 425, 429})


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the HMAC-SHA256 hex digest."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_body(delivery: Delivery, timestamp: int) -> bytes:
    """The JSON body of one attempt of ``delivery``, sent at ``timestamp``."""
    document = {
        "id": delivery.key,
        "timestamp": timestamp,
        "rule": {"id": delivery.rule_id, "name": delivery.rule_name},
        "device": {
            "uniqueId": delivery.event["uniqueId"],
            "name": delivery.device_name,
        },
        "event": delivery.event,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookSender:
    """Posts deliveries to their webhooks, one request per delivery.

    ``timeout_s`` bounds each request (connect, write, read).  ``clock`` gives the
    Unix time for the timestamp.  Call :meth:`aclose` when done.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    async def __call__(self, batch: Sequence[Delivery]) -> list[Failure | None]:
        """Post every delivery of ``batch``; a failure or ``None`` for each."""
        return [await self.post(delivery) for delivery in batch]

    async def post(self, delivery: Delivery) -> Failure | None:
        """Post one delivery; ``None`` on a 2xx answer."""
        channel = delivery.channel
        if not isinstance(channel, WebhookChannel):
            return Failure(f"not a webhook channel: {channel.kind}", retry=False)
        timestamp = int(self._clock())
        body = webhook_body(delivery, timestamp)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(channel.secret, body),
            TIMESTAMP_HEADER: str(timestamp),
            DELIVERY_HEADER: delivery.key,
        }

        try:
            response = await self._client.post(
                channel.url, content=body, headers=headers
            )
        except httpx.TransportError as error:
            # The class name only: some messages quote the URL.
            return Failure(type(error).__name__, retry=True)
        if response.is_success:
            return None
        retry = response.status_code in _RETRY_STATUSES or response.status_code >= 500
        return Failure(f"HTTP {response.status_code}", retry=retry)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
