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

A webhook URL is typed in by a user, so the server must not become a way into its
own network: each request connects only to a public address (or to one of the
networks the operator allows, ``webhook_allowed_networks``).  The host is
resolved here, checked, and the connection made to the checked address, with the
host name kept for the ``Host`` header and TLS, so that a name which resolves
differently a moment later cannot slip past the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Final

import httpx

from pipeline.config import IPNetwork
from pipeline.notify.channels import Delivery, Failure
from pipeline.notify.rules import WebhookChannel

__all__ = [
    "DELIVERY_HEADER",
    "NOT_PUBLIC",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookSender",
    "reachable",
    "sign",
    "webhook_body",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SIGNATURE_HEADER: Final = "X-Rastro-Signature"
TIMESTAMP_HEADER: Final = "X-Rastro-Timestamp"
DELIVERY_HEADER: Final = "X-Rastro-Delivery"
USER_AGENT: Final = "Rastro-Webhook/1"
_RETRY_STATUSES: Final = frozenset({408, 425, 429})

#: The failure of a webhook whose host has no address a webhook may reach.
NOT_PUBLIC: Final = (
    "the webhook's host is not a public address; an administrator may allow its "
    "network (webhook_allowed_networks)"
)


def reachable(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> bool:
    """Whether a webhook may connect to ``address``: public, or in ``allowed``.

    Loopback, private, link-local (cloud metadata services), shared and reserved
    addresses are not public.  An IPv4 address written as IPv6 is judged as IPv4.

    >>> from ipaddress import ip_address, ip_network
    >>> reachable(ip_address("93.184.216.34")), reachable(ip_address("10.1.2.3"))
    (True, False)
    >>> reachable(ip_address("::ffff:169.254.169.254"))
    False
    >>> reachable(ip_address("10.1.2.3"), [ip_network("10.0.0.0/8")])
    True
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for network in allowed:
        if network.version == address.version and address in network:
            return True
    return address.is_global


class _Refused(Exception):
    """No address of the webhook's host may be reached."""


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

    ``timeout_s`` bounds each request (connect, write, read), and the name lookup
    before it.  ``allowed_networks`` are the networks it may reach besides public
    addresses (see :func:`reachable`).  ``verify`` is httpx's: ``True`` checks
    certificates against the system's authorities, an ``ssl.SSLContext`` against
    its own.  ``clock`` gives the Unix time for the timestamp.  Call
    :meth:`aclose` when done.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        allowed_networks: Sequence[IPNetwork] = (),
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._timeout_s = timeout_s
        self._allowed = tuple(allowed_networks)
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            verify=verify,
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
            response = await self._post_pinned(httpx.URL(channel.url), body, headers)
        except _Refused:
            return Failure(NOT_PUBLIC, retry=False)
        except (httpx.TransportError, OSError, TimeoutError) as error:
            # The class name only: some messages quote the URL.
            return Failure(type(error).__name__, retry=True)
        if response.is_success:
            return None
        retry = response.status_code in _RETRY_STATUSES or response.status_code >= 500
        return Failure(f"HTTP {response.status_code}", retry=retry)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _post_pinned(
        self, url: httpx.URL, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """Post to the first address of ``url``'s host that may be reached and
        accepts the connection, keeping the host name for ``Host`` and TLS.

        Raises :class:`_Refused` when no address may be reached, ``OSError`` when
        the name does not resolve, the last ``httpx.ConnectError`` when no
        address accepts.
        """
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await asyncio.wait_for(_resolve(host, port), self._timeout_s)
        permitted = [a for a in addresses if reachable(a, self._allowed)]
        if not permitted:
            raise _Refused

        headers["Host"] = url.netloc.decode("ascii")
        # The name for SNI and the certificate check, though the URL holds an address.
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}

        async def send(address: IPAddress) -> httpx.Response:
            target = url.copy_with(host=str(address))
            return await self._client.post(
                target, content=body, headers=headers, extensions=extensions
            )

        for address in permitted[:-1]:
            with contextlib.suppress(httpx.ConnectError):
                return await send(address)
        return await send(permitted[-1])


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (itself if it is one), IPv4 first.

    IPv4 first because a host without an IPv6 route is more common than a
    webhook reachable over IPv6 only.
    """
    loop = asyncio.get_running_loop()
    answers = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = dict.fromkeys(ipaddress.ip_address(answer[4][0]) for answer in answers)
    return sorted(addresses, key=lambda address: address.version)
