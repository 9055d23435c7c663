"""CoAP ingest: constrained devices ``POST /positions`` over UDP (port 5683).

The payload is the API's: JSON (one position object or an array, Content-Format
``application/json``, 50) or Protocol Buffers (a ``rastro.v1.FixBatch`` or a single
``Fix``; Content-Format ``application/octet-stream``, 42, or
:data:`CONTENT_FORMAT_PROTOBUF`, 65100, a number of CoAP's experimental range that
Rastro gives to its own schema).  Without a Content-Format option the first byte
decides, as on MQTT: ``{`` or ``[`` is JSON, anything else Protocol Buffers.  A
device is known by the uniqueId in its payload, which must be registered (the
device directory), as on the OsmAnd port: no token.

Responses, all after Kafka answered:

- 2.04 Changed, ``{"accepted": n}``: every record is durable in Kafka.
- 4.00 Bad Request: the payload cannot be read (the reason as text), or some
  records were refused, ``{"accepted": n, "rejected": [{"index", "reason"}],
  "rejectedTotal": m}`` (the first 20 listed); the good records are in Kafka all
  the same.  4.03 Forbidden with the same body when every record names a device
  that is not registered (logged once per device); 4.29 Too Many Requests (Max-Age
  1) when every refusal is a device over its rate.
- 4.13 Request Entity Too Large, 4.15 Unsupported Content-Format.
- 5.03 Service Unavailable with Max-Age :data:`RETRY_AFTER_S` (the retry hint)
  when Kafka did not acknowledge: nothing of the request may be taken as stored.

**What a device sees.**  aiocoap answers a Confirmable request with the response
piggybacked on the ACK when the handler is done within 0.1 s (its
``EMPTY_ACK_DELAY``).  A publish to Kafka usually takes longer (``acks=all``,
linger), so the device mostly receives an *empty* ACK after 0.1 s, which only stops
its retransmissions, and then the 2.04 as a separate Confirmable response once
Kafka acknowledged (or the 5.03 once the delivery timeout passed).  The empty ACK
is not a promise: a device must keep its fixes until a 2.xx response arrives.  A
retransmission with the same Message ID within 247 s (EXCHANGE_LIFETIME) is
answered from aiocoap's cache and not ingested twice.  Non-confirmable requests
get a non-confirmable response.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import aiocoap  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
import structlog
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from pipeline.ingest.payloads import (
    MAX_RECORDS,
    ParsedBatch,
    PayloadError,
    parse_json_positions,
    parse_protobuf_positions,
)
from pipeline.ingest.service import IngestResult, IngestService
from pipeline.ingest.sightings import FirstSightings
from pipeline.kafka import KafkaUnavailable
from pipeline.model import Fix

__all__ = [
    "CONTENT_FORMAT_JSON",
    "CONTENT_FORMAT_OCTET_STREAM",
    "CONTENT_FORMAT_PROTOBUF",
    "DEFAULT_PORT",
    "RETRY_AFTER_S",
    "CoapPortInUse",
    "CoapServer",
    "PositionsResource",
    "decode_coap_payload",
    "serve_coap",
]

log = structlog.get_logger("rastro.ingest.coap")

DEFAULT_PORT = 5683
PATH = ("positions",)
PROTOCOL = "coap"
CONTENT_FORMAT_TEXT = 0
CONTENT_FORMAT_OCTET_STREAM = 42
CONTENT_FORMAT_JSON = 50
CONTENT_FORMAT_PROTOBUF = 65100
MAX_BODY = 256 * 1024
MAX_LISTED_REJECTIONS = 20
RETRY_AFTER_S = 5

_PROTOBUF_FORMATS = frozenset({CONTENT_FORMAT_OCTET_STREAM, CONTENT_FORMAT_PROTOBUF})
_PAYLOAD_ERROR_CODES = {
    400: Code.BAD_REQUEST,
    413: Code.REQUEST_ENTITY_TOO_LARGE,
    415: Code.UNSUPPORTED_CONTENT_FORMAT,
}

MayReport = Callable[[str], Awaitable[bool]]


class CoapPortInUse(OSError):
    """The CoAP server's UDP port is taken; the message names it."""


def decode_coap_payload(
    payload: bytes,
    content_format: int | None,
    *,
    server_time_ms: int,
    max_records: int = MAX_RECORDS,
) -> ParsedBatch:
    """Decode a ``POST /positions`` payload by its Content-Format (module doc).

    Raises :class:`~pipeline.ingest.payloads.PayloadError`: status 415 for another
    Content-Format, 413 over :data:`MAX_BODY` bytes, 400 when it cannot be read.
    """
    if len(payload) > MAX_BODY:
        message = f"payload is {len(payload)} bytes; at most {MAX_BODY} are accepted"
        raise PayloadError(message, 413)
    if content_format is None:
        is_json = payload.lstrip()[:1] in {b"{", b"["}
    elif content_format == CONTENT_FORMAT_JSON:
        is_json = True
    elif content_format in _PROTOBUF_FORMATS:
        is_json = False
    else:
        message = (
            f"content format must be {CONTENT_FORMAT_JSON} (application/json), "
            f"{CONTENT_FORMAT_OCTET_STREAM} or {CONTENT_FORMAT_PROTOBUF} "
            f"(Protocol Buffers), got {content_format}"
        )
        raise PayloadError(message, 415)

    if is_json:
        return parse_json_positions(
            payload,
            server_time_ms=server_time_ms,
            protocol=PROTOCOL,
            max_records=max_records,
        )
    return parse_protobuf_positions(
        payload,
        server_time_ms=server_time_ms,
        protocol=PROTOCOL,
        max_records=max_records,
    )


class PositionsResource(aiocoap.resource.Resource):  # type: ignore[misc]
    """``/positions``: POST decodes, checks and publishes; answers after Kafka."""

    def __init__(
        self, ingest: IngestService, may_report: MayReport | None = None
    ) -> None:
        super().__init__()
        self.ingest = ingest
        self.may_report = may_report or ingest.known_device
        self.unknown = FirstSightings()

    async def render_post(self, request: Any) -> Any:
        """Answer one POST (see the module doc for the codes)."""
        server_time_ms = time.time_ns() // 1_000_000
        remote = request.remote.hostinfo
        try:
            batch = decode_coap_payload(
                request.payload,
                _content_format(request),
                server_time_ms=server_time_ms,
            )
        except PayloadError as error:
            log.warning("coap_request_malformed", remote=remote, reason=str(error))
            return _text(
                _PAYLOAD_ERROR_CODES.get(error.status, Code.BAD_REQUEST), error
            )

        try:
            result = await self.ingest.accept(
                batch.fixes, self.may_report, rejected=batch.rejected
            )
        except KafkaUnavailable as error:
            log.warning("coap_kafka_unavailable", remote=remote, error=str(error))
            response = _text(
                Code.SERVICE_UNAVAILABLE,
                "positions store (Kafka) unavailable; retry later",
            )
            response.opt.max_age = RETRY_AFTER_S
            return response
        self._log_unknown(result, batch)
        return _result_response(result)

    def _log_unknown(self, result: IngestResult, batch: ParsedBatch) -> None:
        devices = _devices_by_index(batch.fixes)
        for rejection in result.rejected:
            if rejection.kind != "unknown_device":
                continue
            device = devices[rejection.index]
            if self.unknown.first_time(device):
                log.warning("coap_unknown_device", device=device)


class CoapServer:
    """The CoAP positions server on ``host:port`` (UDP), as an async context.

    ``may_report`` decides whether a device may report (default: it is registered
    in the ingest service's directory).
    """

    def __init__(
        self,
        ingest: IngestService,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        may_report: MayReport | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.resource = PositionsResource(ingest, may_report)
        self._context: Any = None

    async def start(self) -> None:
        """Bind the UDP port and start answering.

        Raises :class:`CoapPortInUse` when another socket holds the port: aiocoap
        binds with ``SO_REUSEPORT``, which would otherwise let a second server
        share the port silently and receive half of the datagrams.
        """
        await asyncio.to_thread(_check_port_free, self.host, self.port)
        site = aiocoap.resource.Site()
        site.add_resource(PATH, self.resource)
        self._context = await aiocoap.Context.create_server_context(
            site,
            bind=(self.host, self.port),
            transports=["udp6"],
            loggername="rastro.ingest.coap.aiocoap",
        )
        log.info("coap_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Close the port; requests in progress are abandoned unanswered."""
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve_coap(
    ingest: IngestService,
    host: str,
    port: int,
    shutdown_event: asyncio.Event,
    *,
    may_report: MayReport | None = None,
) -> None:
    """Serve CoAP on ``host:port`` until ``shutdown_event`` is set."""
    async with CoapServer(ingest, host, port, may_report=may_report):
        await shutdown_event.wait()


def _check_port_free(host: str, port: int) -> None:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM
    )[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as error:
            message = f"UDP port {port} on {host} is already in use ({error.strerror})"
            raise CoapPortInUse(message) from error


def _content_format(request: Any) -> int | None:
    content_format = request.opt.content_format
    return None if content_format is None else int(content_format)


def _devices_by_index(fixes: list[tuple[int, Fix]]) -> dict[int, str]:
    return {index: fix.device for index, fix in fixes}


def _result_response(result: IngestResult) -> Any:
    if not result.rejected:
        return _json(Code.CHANGED, {"accepted": result.accepted})

    content = {
        "accepted": result.accepted,
        "rejected": [
            {"index": rejection.index, "reason": rejection.reason}
            for rejection in result.rejected[:MAX_LISTED_REJECTIONS]
        ],
        "rejectedTotal": len(result.rejected),
    }
    kinds = {rejection.kind for rejection in result.rejected}
    if kinds == {"rate_limited"}:
        response = _json(Code.TOO_MANY_REQUESTS, content)
        response.opt.max_age = 1
        return response
    if kinds == {"unknown_device"} and result.accepted == 0:
        return _json(Code.FORBIDDEN, content)
    return _json(Code.BAD_REQUEST, content)


def _json(code: Any, content: dict[str, Any]) -> Any:
    payload = json.dumps(content, separators=(",", ":")).encode()
    return aiocoap.Message(
        code=code, payload=payload, content_format=CONTENT_FORMAT_JSON
    )


def _text(code: Any, reason: object) -> Any:
    return aiocoap.Message(
        code=code, payload=str(reason).encode(), content_format=CONTENT_FORMAT_TEXT
    )
