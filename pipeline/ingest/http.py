"""The REST positions upload: ``POST /api/v1/positions`` (mounted by the API).

The API authenticates the caller and passes ``may_report`` (may this caller report
for that device?).  Answers:

- 200 ``{"accepted": n}``: every record is in Kafka;
- 400 ``{"accepted": n, "rejected": [{"index", "reason"}]}``: some records were
  refused (the good ones are in Kafka all the same); 429 instead when every refusal
  is a device over its rate;
- 400 ``{"error": ...}``: the body cannot be decoded at all;
- 413 too large (over 5 MB or 10,000 records), 415 unknown content type;
- 503 ``{"error": ...}`` with ``Retry-After`` while Kafka is unavailable: nothing
  of the request may be taken as stored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from pipeline.ingest.payloads import (
    MAX_BODY_BYTES,
    MAX_RECORDS,
    PayloadError,
    parse_positions,
)
from pipeline.ingest.service import IngestResult, IngestService
from pipeline.kafka import KafkaUnavailable

__all__ = ["RETRY_AFTER_S", "ingest_positions", "read_limited_body"]

log = structlog.get_logger("rastro.ingest.http")

RETRY_AFTER_S = 5


async def ingest_positions(
    request: Request,
    ingest: IngestService,
    may_report: Callable[[str], Awaitable[bool]],
    *,
    max_records: int = MAX_RECORDS,
    max_bytes: int = MAX_BODY_BYTES,
) -> Response:
    """Decode, check and publish a positions upload; answer once Kafka acked."""
    server_time_ms = time.time_ns() // 1_000_000
    try:
        body = await read_limited_body(request, max_bytes)
        batch = parse_positions(
            body,
            request.headers.get("content-type"),
            server_time_ms=server_time_ms,
            max_records=max_records,
            max_bytes=max_bytes,
        )
    except PayloadError as error:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    try:
        result = await ingest.accept(batch.fixes, may_report, rejected=batch.rejected)
    except KafkaUnavailable as error:
        log.warning("positions_kafka_unavailable", error=str(error))
        return JSONResponse(
            {"error": "the positions store (Kafka) is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return _result_response(result)


async def read_limited_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        message = f"body is {declared} bytes; at most {max_bytes} are accepted"
        raise PayloadError(message, 413)

    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                message = f"body is over {max_bytes} bytes, the most accepted"
                raise PayloadError(message, 413)
            chunks.append(chunk)
    except ClientDisconnect as error:
        message = "the client disconnected before sending the whole body"
        raise PayloadError(message) from error
    return b"".join(chunks)


def _result_response(result: IngestResult) -> Response:
    if not result.rejected:
        return JSONResponse({"accepted": result.accepted})

    content = {
        "accepted": result.accepted,
        "rejected": [
            {"index": rejection.index, "reason": rejection.reason}
            for rejection in result.rejected
        ],
    }
    if all(rejection.status == 429 for rejection in result.rejected):
        return JSONResponse(content, status_code=429, headers={"Retry-After": "1"})
    return JSONResponse(content, status_code=400)
