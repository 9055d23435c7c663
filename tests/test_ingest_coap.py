"""CoAP ``POST /positions`` against real Kafka and PostgreSQL, with aiocoap clients.

Most tests use aiocoap's own client, as a device library would.  The tests of what
a device sees on the wire (empty ACK, separate response, a retransmission) send
and read raw UDP datagrams, so that nothing in between hides a message.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiocoap
import pytest
import structlog
from aiocoap.numbers.codes import Code

from pipeline.ingest.coap import (
    CONTENT_FORMAT_JSON,
    CONTENT_FORMAT_OCTET_STREAM,
    CONTENT_FORMAT_PROTOBUF,
    CoapPortInUse,
    CoapServer,
    decode_coap_payload,
    serve_coap,
)
from pipeline.ingest.payloads import PayloadError, encode_batch
from pipeline.ingest.service import IngestService
from pipeline.model import Fix
from pipeline.services.kafka import EmbeddedKafka
from tests.fixtures.ingest import MakeIngest, reset_rate_bucket
from tests.fixtures.kafka import read_topic

NOW_MS = 1_760_000_000_000
CONTENT_FORMAT_TEXT = 0


def _position(**fields: object) -> dict[str, object]:
    document = {"uniqueId": "dev-1", "time": "2025-05-09T04:11:30Z"}
    return document | {"latitude": 48.1, "longitude": 11.5} | fields


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fixes(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30
) -> list[Fix]:
    records = read_topic(bootstrap, topic, expected, timeout_s=timeout_s)
    return [Fix.FromString(value) for _, value in records]


class TestDecodeCoapPayload:
    def test_decode_json_by_content_format(self) -> None:
        batch = decode_coap_payload(
            _json([_position(), _position(uniqueId="dev-2")]),
            CONTENT_FORMAT_JSON,
            server_time_ms=NOW_MS,
        )

        assert [fix.device for _, fix in batch.fixes] == ["dev-1", "dev-2"]
        assert {fix.protocol for _, fix in batch.fixes} == {"coap"}

    @pytest.mark.parametrize(
        "content_format", [CONTENT_FORMAT_OCTET_STREAM, CONTENT_FORMAT_PROTOBUF, None]
    )
    def test_decode_protobuf_batch(self, content_format: int | None) -> None:
        fixes = [Fix(device="dev-1", latitude=1, longitude=2, fix_time_ms=5)] * 2

        batch = decode_coap_payload(
            encode_batch(fixes), content_format, server_time_ms=NOW_MS
        )

        assert [(index, fix.fix_time_ms) for index, fix in batch.fixes] == [
            (0, 5),
            (1, 5),
        ]

    def test_decode_without_content_format_sniffs_json(self) -> None:
        batch = decode_coap_payload(_json(_position()), None, server_time_ms=NOW_MS)

        assert [fix.latitude for _, fix in batch.fixes] == [48.1]

    def test_decode_other_content_format_is_415(self) -> None:
        with pytest.raises(PayloadError, match="content format must be 50") as caught:
            decode_coap_payload(b"\xa0", 60, server_time_ms=NOW_MS)

        assert caught.value.status == 415

    def test_decode_oversized_payload_is_413(self) -> None:
        with pytest.raises(PayloadError, match="at most 262144 are accepted") as caught:
            decode_coap_payload(b"[" + b" " * 300_000 + b"]", 50, server_time_ms=NOW_MS)

        assert caught.value.status == 413


# -- the server ---------------------------------------------------------------------


@asynccontextmanager
async def _serving(ingest: IngestService) -> AsyncIterator[int]:
    port = _free_udp_port()
    async with CoapServer(ingest, "127.0.0.1", port):
        yield port


@pytest.fixture
async def coap_client() -> AsyncIterator[Any]:
    """An aiocoap client context, as a device library would use."""
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield context
    finally:
        await context.shutdown()


async def _post(
    client: Any,
    port: int,
    payload: bytes,
    content_format: int | None = CONTENT_FORMAT_JSON,
    *,
    code: Any = Code.POST,
    reliable: bool = True,
) -> Any:
    options: dict[str, Any] = {"content_format": content_format}
    if content_format is None:
        options = {}
    request = aiocoap.Message(
        code=code,
        uri=f"coap://127.0.0.1:{port}/positions",
        payload=payload,
        transport_tuning=aiocoap.Reliable if reliable else aiocoap.Unreliable,
        **options,
    )
    return await client.request(request).response


def _body(response: Any) -> Any:
    assert response.opt.content_format == CONTENT_FORMAT_JSON
    return json.loads(response.payload)


@pytest.mark.integration
class TestCoapServer:
    async def test_coap_json_post_reaches_kafka(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)

        async with _serving(ingest) as port:
            response = await _post(coap_client, port, _json(_position(speed=30)))

        assert response.code == Code.CHANGED
        assert response.payload == b'{"accepted":1}'
        assert response.opt.content_format == CONTENT_FORMAT_JSON
        [(key, value)] = read_topic(kafka_bootstrap, ingest_topic, 1)
        fix = Fix.FromString(value)
        assert key == b"dev-1" and fix.protocol == "coap"
        assert (fix.latitude, fix.longitude) == (48.1, 11.5)
        assert fix.speed_kmh == pytest.approx(30.0)

    async def test_coap_protobuf_batch_and_fix_reach_kafka(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        batch = encode_batch(
            [
                Fix(device="dev-1", latitude=1, longitude=2, fix_time_ms=t)
                for t in (1, 2)
            ]
        )
        single = Fix(device="dev-2", latitude=3, longitude=4, fix_time_ms=3)

        async with _serving(ingest) as port:
            by_batch = await _post(
                coap_client, port, batch, CONTENT_FORMAT_OCTET_STREAM
            )
            by_fix = await _post(
                coap_client, port, single.SerializeToString(), CONTENT_FORMAT_PROTOBUF
            )
            unannounced = await _post(coap_client, port, batch, None)

        assert [r.code for r in (by_batch, by_fix, unannounced)] == [Code.CHANGED] * 3
        assert [_body(r) for r in (by_batch, by_fix)] == [
            {"accepted": 2},
            {"accepted": 1},
        ]
        fixes = _fixes(kafka_bootstrap, ingest_topic, 5)
        assert sorted(fix.fix_time_ms for fix in fixes) == [1, 1, 2, 2, 3]

    async def test_coap_bad_records_are_listed_and_good_ones_kept(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        records = [_position(latitude=95), _position(), _position(uniqueId="nobody")]

        async with _serving(ingest) as port:
            response = await _post(coap_client, port, _json(records))

        assert response.code == Code.BAD_REQUEST
        assert _body(response) == {
            "accepted": 1,
            "rejected": [
                {"index": 0, "reason": "latitude must be between -90 and 90, got 95.0"},
                {
                    "index": 2,
                    "reason": "device 'nobody' is unknown or not yours to report for",
                },
            ],
            "rejectedTotal": 2,
        }
        assert [fix.latitude for fix in _fixes(kafka_bootstrap, ingest_topic, 1)] == [
            48.1
        ]

    async def test_coap_unknown_device_is_403_and_logged_once(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        payload = _json(_position(uniqueId="stranger"))

        with structlog.testing.capture_logs() as logs:
            async with _serving(ingest) as port:
                responses = [await _post(coap_client, port, payload) for _ in range(3)]

        assert [response.code for response in responses] == [Code.FORBIDDEN] * 3
        assert _body(responses[0])["rejected"] == [
            {
                "index": 0,
                "reason": "device 'stranger' is unknown or not yours to report for",
            }
        ]
        unknown = [e for e in logs if e["event"] == "coap_unknown_device"]
        assert [entry["device"] for entry in unknown] == ["stranger"]
        assert read_topic(kafka_bootstrap, ingest_topic, 1, timeout_s=1) == []

    async def test_coap_malformed_is_refused_with_reason(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)

        async with _serving(ingest) as port:
            not_json = await _post(coap_client, port, b"{not json")
            not_protobuf = await _post(
                coap_client, port, b"\xff\xff\xff", CONTENT_FORMAT_OCTET_STREAM
            )
            cbor = await _post(coap_client, port, b"\xa0", 60)
            by_get = await _post(coap_client, port, b"", None, code=Code.GET)
            empty = await _post(coap_client, port, b"[]")

        assert not_json.code == Code.BAD_REQUEST
        assert not_json.opt.content_format == CONTENT_FORMAT_TEXT
        assert not_json.payload == (
            b"body is not valid JSON: Expecting property name enclosed in double "
            b"quotes (line 1, column 2)"
        )
        assert not_protobuf.code == Code.BAD_REQUEST
        assert b"body is not Protocol Buffers" in not_protobuf.payload
        assert cbor.code == Code.UNSUPPORTED_CONTENT_FORMAT
        assert cbor.payload.startswith(b"content format must be 50 (application/json)")
        assert by_get.code == Code.METHOD_NOT_ALLOWED
        assert (empty.code, empty.payload) == (
            Code.BAD_REQUEST,
            b"request has no records",
        )
        assert read_topic(kafka_bootstrap, ingest_topic, 1, timeout_s=1) == []

    async def test_coap_device_over_rate_gets_429(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        redis_url: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(
            kafka_bootstrap, ingest_topic, redis_url=redis_url, rate=1
        )
        await reset_rate_bucket(redis_url, "dev-2")
        payload = _json(_position(uniqueId="dev-2"))

        async with _serving(ingest) as port:
            first = await _post(coap_client, port, payload)
            second = await _post(coap_client, port, payload)

        assert (first.code, second.code) == (Code.CHANGED, Code.TOO_MANY_REQUESTS)
        assert second.opt.max_age == 1
        assert _body(second)["accepted"] == 0

    async def test_coap_non_confirmable_gets_non_response(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)

        async with _serving(ingest) as port:
            response = await _post(
                coap_client, port, _json(_position()), reliable=False
            )

        assert (response.code, response.mtype) == (Code.CHANGED, aiocoap.NON)
        assert len(_fixes(kafka_bootstrap, ingest_topic, 1)) == 1

    async def test_coap_kafka_down_is_503_then_delivered(
        self,
        make_ingest: MakeIngest,
        outage_broker: EmbeddedKafka,
        coap_client: Any,
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        topic = f"positions-coap-{uuid.uuid4().hex[:6]}"
        ingest = await make_ingest(bootstrap, topic, delivery_timeout_s=2)
        payload = _json(_position(time="2025-05-09T04:11:31Z"))

        async with _serving(ingest) as port:
            await asyncio.to_thread(outage_broker.stop)
            down = await _post(coap_client, port, payload)
            await asyncio.to_thread(outage_broker.start)
            again = await _retry_until_changed(coap_client, port, payload)

        assert down.code == Code.SERVICE_UNAVAILABLE
        assert down.opt.max_age == 5
        assert down.payload == b"positions store (Kafka) unavailable; retry later"
        assert again.code == Code.CHANGED
        times = {fix.fix_time_ms for fix in _fixes(bootstrap, topic, 99, timeout_s=5)}
        assert times == {1_746_763_891_000}
        assert ingest.kafka_failures >= 1

    async def test_coap_serve_until_shutdown(
        self,
        make_ingest: MakeIngest,
        kafka_bootstrap: str,
        ingest_topic: str,
        coap_client: Any,
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)
        port, stopping = _free_udp_port(), asyncio.Event()
        server = asyncio.create_task(serve_coap(ingest, "127.0.0.1", port, stopping))

        try:
            await asyncio.sleep(0.3)  # the bind
            response = await _post(coap_client, port, _json(_position()))
        finally:
            stopping.set()
            await server

        assert response.code == Code.CHANGED
        assert read_topic(kafka_bootstrap, ingest_topic, 1)[0][0] == b"dev-1"

    async def test_coap_port_taken_is_refused(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)

        async with _serving(ingest) as port:
            second = CoapServer(ingest, "127.0.0.1", port)
            with pytest.raises(CoapPortInUse, match=f"UDP port {port} on 127.0.0.1 is"):
                await second.start()


async def _retry_until_changed(client: Any, port: int, payload: bytes) -> Any:
    """What a device does after 5.03: wait Max-Age, send again until stored."""
    for _ in range(30):
        response = await _post(client, port, payload)
        if response.code == Code.CHANGED:
            return response
        await asyncio.sleep(1)
    return response


# -- on the wire -----------------------------------------------------------------------


class _RawDevice:
    """A device speaking CoAP by hand: sends datagrams, reads each one back."""

    def __init__(self, port: int) -> None:
        self.address = ("127.0.0.1", port)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def post(self, mid: int, token: bytes, payload: bytes) -> None:
        request = aiocoap.Message(
            code=Code.POST,
            payload=payload,
            content_format=CONTENT_FORMAT_JSON,
            uri_path=("positions",),
        )
        request.mtype, request.mid, request.token = aiocoap.CON, mid, token
        self.socket.sendto(request.encode(), self.address)

    def ack(self, mid: int) -> None:
        ack = aiocoap.Message(code=Code.EMPTY)
        ack.mtype, ack.mid, ack.token = aiocoap.ACK, mid, b""
        self.socket.sendto(ack.encode(), self.address)

    async def receive(self, timeout_s: float) -> Any:
        def read() -> bytes:
            self.socket.settimeout(timeout_s)
            return self.socket.recv(2048)

        return aiocoap.Message.decode(await asyncio.to_thread(read))

    def close(self) -> None:
        self.socket.close()


@pytest.mark.integration
class TestCoapOnTheWire:
    async def test_wire_slow_kafka_gets_empty_ack_then_separate_response(
        self, make_ingest: MakeIngest, outage_broker: EmbeddedKafka
    ) -> None:
        bootstrap = outage_broker.bootstrap_servers
        topic = f"positions-coap-{uuid.uuid4().hex[:6]}"
        ingest = await make_ingest(bootstrap, topic, delivery_timeout_s=2)

        async with _serving(ingest) as port:
            device = _RawDevice(port)
            await asyncio.to_thread(outage_broker.stop)
            try:
                device.post(0x1234, b"\x0a\x0b", _json(_position()))
                empty_ack = await device.receive(timeout_s=1)
                separate = await device.receive(timeout_s=10)
                device.ack(separate.mid)
            finally:
                device.close()
                await asyncio.to_thread(outage_broker.start)

        assert (empty_ack.mtype, empty_ack.code, empty_ack.mid) == (
            aiocoap.ACK,
            Code.EMPTY,
            0x1234,
        )
        assert empty_ack.payload == b""
        assert (separate.mtype, separate.code) == (
            aiocoap.CON,
            Code.SERVICE_UNAVAILABLE,
        )
        assert separate.token == b"\x0a\x0b" and separate.opt.max_age == 5

    async def test_wire_retransmission_is_not_ingested_twice(
        self, make_ingest: MakeIngest, kafka_bootstrap: str, ingest_topic: str
    ) -> None:
        ingest = await make_ingest(kafka_bootstrap, ingest_topic)

        async with _serving(ingest) as port:
            device = _RawDevice(port)
            try:
                device.post(0x0042, b"\x01", _json(_position()))
                first = await _final_response(device)
                device.post(0x0042, b"\x01", _json(_position()))  # its ACK was "lost"
                again = await device.receive(timeout_s=5)
            finally:
                device.close()

        assert first.code == Code.CHANGED and first.payload == b'{"accepted":1}'
        # aiocoap answers a duplicate from its cache: the piggybacked response, or
        # the empty ACK when the response went separately.
        piggybacked = first.mtype == aiocoap.ACK
        assert (again.mtype, again.mid) == (aiocoap.ACK, 0x0042)
        assert again.code == (Code.CHANGED if piggybacked else Code.EMPTY)
        assert len(_fixes(kafka_bootstrap, ingest_topic, 2, timeout_s=3)) == 1
        assert ingest.accepted == 1


async def _final_response(device: _RawDevice) -> Any:
    """The response, piggybacked or separate (then acknowledged, as a device must)."""
    message = await device.receive(timeout_s=10)
    if message.code == Code.EMPTY:
        message = await device.receive(timeout_s=10)
        device.ack(message.mid)
    return message
