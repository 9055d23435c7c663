"""The tracker servers, on real Kafka, PostgreSQL and Redis: replies, records, refusals.

Every sample of /work/shared/protocols/samples.json (real packets from Traccar's
decoder tests, commit 9e5c458; each sample names its source) goes through a live
server over TCP, over UDP where the protocol speaks it, and through the detection
port: the reply's exact bytes are checked, then the fixes are read back from Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from pipeline.config import (
    SettingError,
    add_setting_flags,
    flags_from_namespace,
    load_settings,
)
from pipeline.ingest.protocols import PROTOCOL_MODULES, tracker_protocols
from pipeline.ingest.protocols.base import (
    Decoded,
    FrameError,
    TrackerProtocol,
    TrackerSession,
)
from pipeline.ingest.trackers import MAX_MALFORMED_IN_A_ROW, detect_protocol
from pipeline.model import Fix, parse_time_ms
from pipeline.ports import free_port
from pipeline.services.kafka import EmbeddedKafka
from pipeline.store.devices import list_devices
from pipeline.store.users import create_user
from pipeline.supervisor import tracker_ports
from tests.fixtures.trackers import (
    CORRUPT_SAMPLES,
    RunningTrackers,
    StartTrackers,
    TrackerClient,
    context_reply,
    corrupt_samples,
    gt06_ack,
    gt06_login,
    payload,
    teltonika_datagram,
    tracker_samples,
    wire_bytes,
)

pytestmark = pytest.mark.integration

SAMPLES = tracker_samples()
SAMPLE_IDS = [sample["id"] for sample in SAMPLES]


PROTOCOLS = tracker_protocols()

# The Teltonika handshake of the samples (IMEI 356307042441013, Teltonika's public
# Codec documentation example) and one data packet (the samples' first).
TELTONIKA_IMEI = "356307042441013"
TELTONIKA_LOGIN = bytes.fromhex("000f333536333037303432343431303133")
TELTONIKA_DATA = payload(SAMPLES[0])
TELTONIKA_6_RECORDS = payload(SAMPLES[2])


def expected_records(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The records a sample must give, in packet order."""
    expected = sample["expected"]
    return list(expected.get("all_records") or [expected])


def assert_fix(fix: Fix, record: dict[str, Any], sample: dict[str, Any]) -> None:
    """The fix read from Kafka carries the sample's values."""
    assert fix.device == sample["expected"]["imei"]
    assert fix.protocol == sample["protocol"]
    assert fix.fix_time_ms == parse_time_ms(record["time"])
    assert fix.latitude == pytest.approx(record["latitude"], abs=1e-6)
    assert fix.longitude == pytest.approx(record["longitude"], abs=1e-6)
    if "valid" in record:
        assert fix.valid is record["valid"]
    if "speed_kmh" in record:
        assert fix.speed_kmh == pytest.approx(record["speed_kmh"], abs=0.01)
    if "course" in record:
        assert fix.course == pytest.approx(record["course"], abs=0.01)
    if "satellites" in record:
        assert fix.satellites == record["satellites"]


async def read_reply(client: TrackerClient, sample: dict[str, Any]) -> None:
    """Read the sample's reply from the server and check it byte for byte."""
    expected = sample["expected"]
    if "ack_hex" in expected:
        wanted = bytes.fromhex(expected["ack_hex"])
        assert await client.read_exactly(len(wanted)) == wanted
    elif "ack_text" in expected:
        wanted = expected["ack_text"].encode()
        assert await client.read_exactly(len(wanted)) == wanted
    elif "ack_text_pattern" in expected:
        assert_clock_reply(await client.read_until(b"#"), expected["ack_text_pattern"])


def assert_clock_reply(reply: bytes, pattern: str) -> None:
    """A reply carrying the server's UTC clock (yyyyMMddHHmmss), within a minute."""
    head, _, tail = pattern.partition("<server UTC time yyyyMMddHHmmss>")
    match = re.fullmatch(
        re.escape(head) + r"(\d{14})" + re.escape(tail), reply.decode()
    )
    assert match is not None, reply
    clock = time.strptime(match.group(1) + "+0000", "%Y%m%d%H%M%S%z")
    assert abs(time.mktime(clock) - time.timezone - time.time()) < 60


def replies_expected(sample: dict[str, Any]) -> bool:
    expected = sample["expected"]
    return any(key in expected for key in ("ack_hex", "ack_text", "ack_text_pattern"))


async def round_trip(
    running: RunningTrackers, sample: dict[str, Any], port: int
) -> None:
    """Log in, send the sample, check the reply, find every record in Kafka."""
    await running.register(sample["expected"]["imei"])
    client = await TrackerClient.connect(port)
    try:
        await exchange(client, sample)
        records = expected_records(sample)
        fixes = await running.fixes(len(records))
        assert len(fixes) == len(records)
        for fix, record in zip(fixes, records, strict=True):  # one partition: in order
            assert_fix(fix, record, sample)
        assert await client.silent(0.3)  # nothing more (or nothing at all) was sent
    finally:
        await client.close()
    await assert_alarm_published(running, sample)


async def exchange(client: TrackerClient, sample: dict[str, Any]) -> None:
    """Send the sample's logins and itself; check each reply byte for byte."""
    for packet in sample["session_context"] or []:
        await client.send(payload(packet))
        login_reply = context_reply(sample, packet)
        assert await client.read_exactly(len(login_reply)) == login_reply
    await client.send(wire_bytes(sample))
    await read_reply(client, sample)


async def assert_alarm_published(
    running: RunningTrackers, sample: dict[str, Any]
) -> None:
    alarm = sample["expected"].get("alarm")
    if alarm is None:
        return
    events = await running.events_published(1)
    assert events and events[0].type == "alarm"
    assert events[0].device == sample["expected"]["imei"]
    assert events[0].attributes["alarm"] == f'"{alarm}"'


class TestRoundTrip:
    @pytest.mark.parametrize("sample", SAMPLES, ids=SAMPLE_IDS)
    async def test_tcp_sample_replies_exactly_and_reaches_kafka(
        self, start_trackers: StartTrackers, sample: dict[str, Any]
    ) -> None:
        running = await start_trackers()

        await round_trip(running, sample, running.port(sample["protocol"]))

    async def test_detection_port_serves_every_sample(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        sent = 0

        for sample in SAMPLES:
            await running.register(sample["expected"]["imei"])
            client = await TrackerClient.connect(running.port("detect"))
            await exchange(client, sample)
            sent += len(expected_records(sample))
            await _until(lambda done=sent: running.server.counters["fixes"] == done)
            await client.close()

        fixes = await running.fixes(sent)
        assert len(fixes) == sent
        for sample in SAMPLES:  # each device's fixes in the order they were sent
            device = sample["expected"]["imei"]
            for record in expected_records(sample):
                fix = next(fix for fix in fixes if fix.device == device)
                fixes.remove(fix)
                assert_fix(fix, record, sample)

    def test_detection_picks_each_samples_protocol(self) -> None:
        for sample in SAMPLES:
            first = (sample["session_context"] or [sample])[0]

            found = detect_protocol(payload(first), PROTOCOLS)

            assert found is not None and found.name == sample["protocol"], sample["id"]

    async def test_frames_split_anywhere_and_merged_still_reply_each(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        await running.register(TELTONIKA_IMEI)
        stream = TELTONIKA_LOGIN + TELTONIKA_DATA + TELTONIKA_6_RECORDS + TELTONIKA_DATA
        client = await TrackerClient.connect(running.port("teltonika"))

        cuts = sorted(random.Random(3).sample(range(1, len(stream)), 40))
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            await client.send(stream[start:end])
        replies = await client.read_exactly(1 + 4 + 4 + 4)
        await client.close()

        assert replies == bytes.fromhex("01000000010000000600000001")
        assert len(await running.fixes(8)) == 8


UDP_SAMPLES = [
    s for s in SAMPLES if PROTOCOLS[s["protocol"]].udp and s["protocol"] != "teltonika"
]


class UdpClient(asyncio.DatagramProtocol):
    """A device's UDP socket: send datagrams to a port, collect what comes back."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait(data)

    @classmethod
    async def connect(cls, port: int) -> UdpClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(
            cls, remote_addr=("127.0.0.1", port)
        )
        return client

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def reply(self, timeout_s: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout_s):
            return await self.received.get()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TestUdp:
    @pytest.mark.parametrize("sample", UDP_SAMPLES, ids=[s["id"] for s in UDP_SAMPLES])
    async def test_udp_sample_replies_and_reaches_kafka(
        self, start_trackers: StartTrackers, sample: dict[str, Any]
    ) -> None:
        running = await start_trackers()
        await running.register(sample["expected"]["imei"])
        client = await UdpClient.connect(running.port(sample["protocol"], "udp"))

        client.send(wire_bytes(sample))
        fixes = await running.fixes(len(expected_records(sample)))
        reply = await client.reply() if replies_expected(sample) else None
        client.close()

        for fix, record in zip(fixes, expected_records(sample), strict=True):
            assert_fix(fix, record, sample)
        expected = sample["expected"]
        if "ack_text_pattern" in expected:
            assert reply is not None
            assert_clock_reply(reply, expected["ack_text_pattern"])
        elif "ack_text" in expected:
            assert reply == expected["ack_text"].encode()
        else:
            assert client.received.empty()

    async def test_teltonika_datagram_gets_its_udp_ack(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        await running.register(TELTONIKA_IMEI)
        client = await UdpClient.connect(running.port("teltonika", "udp"))

        client.send(teltonika_datagram(TELTONIKA_6_RECORDS, TELTONIKA_IMEI, 0xCAFE, 7))
        reply = await client.reply()
        client.close()

        assert reply == bytes.fromhex("0005cafe010706")
        fixes = await running.fixes(6)
        assert [fix.fix_time_ms for fix in fixes] == [
            parse_time_ms(record["time"]) for record in expected_records(SAMPLES[2])
        ]

    async def test_unknown_udp_device_gets_no_ack(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        client = await UdpClient.connect(running.port("teltonika", "udp"))

        with structlog.testing.capture_logs() as logs:
            client.send(teltonika_datagram(TELTONIKA_DATA, "111111111111111", 1, 1))
            client.send(teltonika_datagram(TELTONIKA_DATA, "111111111111111", 2, 2))
            await _until(lambda: running.server.counters["refused"] == 2)
        client.close()

        assert client.received.empty()
        assert [e["event"] for e in logs].count("tracker_unknown_device") == 1


class TestIdentification:
    async def test_unknown_device_refused_and_logged_once_per_address(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        login = b"\x00\x0f" + b"999999999999999"
        port = running.port("teltonika")

        with structlog.testing.capture_logs() as logs:
            answers = []
            for local_host in ("127.0.0.1", "127.0.0.1", "127.0.0.2"):
                client = await TrackerClient.connect(port, local_host=local_host)
                await client.send(login)
                answers.append(await client.closed())

        assert answers == [b"\x00", b"\x00", b"\x00"]  # Teltonika's refusal, then close
        unknown = [e for e in logs if e["event"] == "tracker_unknown_device"]
        assert [(e["device"], e["host"]) for e in unknown] == [
            ("999999999999999", "127.0.0.1"),
            ("999999999999999", "127.0.0.2"),
        ]
        assert running.server.counters["refused"] == 3
        assert await running.fixes(1, timeout_s=1) == []

    async def test_unknown_device_without_refusal_is_closed_silently(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        client = await TrackerClient.connect(running.port("gps103"))

        await client.send(b"##,imei:999999999999998,A;")

        assert await client.closed() == b""

    async def test_register_unknown_registers_to_admin_and_accepts(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers(register_unknown=True)
        admin = await create_user(running.pool, "admin", "secret", is_admin=True)
        imei = "353419036066077"
        client = await TrackerClient.connect(running.port("gt06"))

        with structlog.testing.capture_logs() as logs:
            await client.send(gt06_login(imei, serial=9))
            reply = await client.read_exactly(10)
        await client.close()

        assert reply == gt06_ack(0x01, 9)
        devices = {d.unique_id: d for d in await list_devices(running.pool, None)}
        assert devices[imei].owner_id == admin.id
        assert devices[imei].attributes == {"registeredBy": "gt06"}
        assert [e["event"] for e in logs].count("tracker_device_registered") == 1

    async def test_register_unknown_without_admin_refuses(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers(register_unknown=True)
        client = await TrackerClient.connect(running.port("teltonika"))

        with structlog.testing.capture_logs() as logs:
            await client.send(b"\x00\x0f" + b"353419036066078")
            answer = await client.closed()

        assert answer == b"\x00"
        failed = [e for e in logs if e["event"] == "tracker_register_failed"]
        assert failed and "no user 'admin'" in failed[0]["reason"]

    async def test_directory_down_closes_without_an_answer_and_says_so_once(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        await running.pool.close()  # PostgreSQL cannot be asked any more

        with structlog.testing.capture_logs() as logs:
            answers = []
            for _ in range(2):
                client = await TrackerClient.connect(running.port("teltonika"))
                await client.send(TELTONIKA_LOGIN)
                answers.append(await client.closed())

        assert answers == [b"", b""]  # neither accepted nor refused: it will retry
        down = [e for e in logs if e["event"] == "tracker_directory_unavailable"]
        assert len(down) == 1
        assert running.server.counters["directory_failures"] == 2

    async def test_reconnect_replaces_old_connection_across_protocols(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        await running.register(TELTONIKA_IMEI)
        first = await TrackerClient.connect(running.port("teltonika"))
        await first.send(TELTONIKA_LOGIN)
        assert await first.read_exactly(1) == b"\x01"

        second = await TrackerClient.connect(running.port("gps103"))
        with structlog.testing.capture_logs() as logs:
            await second.send(f"##,imei:{TELTONIKA_IMEI},A;".encode())
            assert await second.read_exactly(4) == b"LOAD"
            left_over = await first.closed()

        assert left_over == b""
        replaced = [e for e in logs if e["event"] == "tracker_connection_replaced"]
        assert len(replaced) == 1
        assert replaced[0]["previous_protocol"] == "teltonika"
        assert replaced[0]["protocol"] == "gps103"
        assert await second.silent(0.2)  # the new connection stays open
        await second.close()


class TestKafkaOutage:
    async def test_no_reply_while_kafka_is_down_and_resent_records_kept(
        self, start_trackers: StartTrackers, outage_broker: EmbeddedKafka
    ) -> None:
        running = await start_trackers(
            bootstrap=outage_broker.bootstrap_servers, delivery_timeout_s=2.0
        )
        await running.register(TELTONIKA_IMEI)
        client = await TrackerClient.connect(running.port("teltonika"))
        await client.send(TELTONIKA_LOGIN)
        assert await client.read_exactly(1) == b"\x01"
        await client.send(TELTONIKA_DATA)
        assert await client.read_exactly(4) == b"\x00\x00\x00\x01"

        await asyncio.to_thread(outage_broker.stop)
        with structlog.testing.capture_logs() as logs:
            await client.send(TELTONIKA_6_RECORDS)
            unacknowledged = await client.closed(timeout_s=15)
        await asyncio.to_thread(outage_broker.start)
        resent = await _resend_until_acknowledged(running, TELTONIKA_6_RECORDS)

        assert unacknowledged == b""  # no reply: the connection closed instead
        assert [e["event"] for e in logs].count("tracker_kafka_unavailable") == 1
        assert resent == b"\x00\x00\x00\x06"
        acknowledged = {parse_time_ms(SAMPLES[0]["expected"]["time"])} | {
            parse_time_ms(record["time"]) for record in expected_records(SAMPLES[2])
        }
        kept = {fix.fix_time_ms for fix in await running.fixes(7, timeout_s=30)}
        assert acknowledged <= kept


async def _resend_until_acknowledged(running: RunningTrackers, packet: bytes) -> bytes:
    """What a Teltonika device does: reconnect, log in, resend until acknowledged."""
    for _ in range(30):
        client = await TrackerClient.connect(running.port("teltonika"))
        try:
            await client.send(TELTONIKA_LOGIN)
            assert await client.read_exactly(1) == b"\x01"
            await client.send(packet)
            return await client.read_exactly(4, timeout_s=15)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            await asyncio.sleep(1)
        finally:
            await client.close()
    raise AssertionError("the resent packet was never acknowledged")


class TestRateLimit:
    async def test_messages_over_the_rate_get_no_reply_and_are_counted(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers(rate=100.0)
        device = f"{random.randrange(10**9, 10**10)}"
        await running.register(device)
        heartbeat = f"[SG*{device}*0002*LK]".encode()
        client = await TrackerClient.connect(running.port("watch"))

        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            await client.send(heartbeat * 300)
            await _until(lambda: running.server.counters["frames"] == 300)
            elapsed = time.monotonic() - started
            replies = await _read_all(client, 0.5)
        await client.close()

        limited = running.server.counters["rate_limited"]
        assert replies.count(heartbeat) == 300 - limited
        # A full bucket of 100, refilled at 100/s while the 300 were handled.
        assert 100 <= 300 - limited <= 100 + 100 * elapsed + 1
        assert running.ingest.limiter is not None
        assert running.ingest.limiter.limited >= limited
        assert [e["event"] for e in logs].count("tracker_rate_limited") == 1

    async def test_redis_away_falls_back_and_says_so_once(
        self, start_trackers: StartTrackers
    ) -> None:
        nowhere = f"redis://127.0.0.1:{free_port()}/0"
        running = await start_trackers(limiter_url=nowhere)
        await running.register("9059011020")
        client = await TrackerClient.connect(running.port("watch"))
        heartbeat = b"[SG*9059011020*0002*LK]"

        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                await client.send(heartbeat)
                assert await client.read_exactly(len(heartbeat)) == heartbeat
        await client.close()

        fallbacks = [e for e in logs if e["event"] == "rate_limiter_fallback"]
        assert len(fallbacks) == 1
        assert fallbacks[0]["reason"] in {"ConnectionError", "TimeoutError"}


class TestHostileInput:
    async def test_random_bytes_close_with_one_line_others_keep_serving(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        await running.register("9059011020")
        healthy = await TrackerClient.connect(running.port("watch"))
        heartbeat = b"[SG*9059011020*0002*LK]"
        await healthy.send(heartbeat)
        assert await healthy.read_exactly(len(heartbeat)) == heartbeat

        junk = bytes(random.Random(7).randrange(256) for _ in range(2000))
        with structlog.testing.capture_logs() as logs:
            hostile = await TrackerClient.connect(running.port("gt06"))
            await hostile.send(b"\x00" + junk)
            assert await hostile.closed() == b""
            await healthy.send(heartbeat)
            assert await healthy.read_exactly(len(heartbeat)) == heartbeat

        [line] = [e for e in logs if e["event"] == "tracker_frame_malformed"]
        assert line["protocol"] == "gt06" and line["stage"] == "split"
        assert line["remote"].startswith("127.0.0.1:") and line["reason"]
        await healthy.close()

    @pytest.mark.parametrize(
        "sample", corrupt_samples(), ids=[s["id"] for s in corrupt_samples()]
    )
    async def test_corrupt_sample_is_dropped_unanswered(
        self, start_trackers: StartTrackers, sample: dict[str, Any]
    ) -> None:
        running = await start_trackers()
        await running.register(sample["expected"]["imei"])
        client = await TrackerClient.connect(running.port(sample["protocol"]))

        with structlog.testing.capture_logs() as logs:
            for packet in sample["session_context"] or []:
                await client.send(payload(packet))
                login_reply = context_reply(sample, packet)
                assert await client.read_exactly(len(login_reply)) == login_reply
            await client.send(wire_bytes(sample))
            await _until(lambda: running.server.counters["malformed"] == 1)

        assert await client.silent(0.3)  # no reply, and the connection stays open
        await client.close()
        [line] = [e for e in logs if e["event"] == "tracker_frame_malformed"]
        assert line["reason"].startswith(CORRUPT_SAMPLES[sample["id"]])
        assert await running.fixes(1, timeout_s=1) == []

    async def test_bad_crc_drops_the_frame_and_keeps_the_connection(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        await running.register("353419036066061")
        login = bytearray(gt06_login("353419036066061", serial=3))
        login[-4] ^= 0xFF  # the CRC's first byte
        client = await TrackerClient.connect(running.port("gt06"))

        with structlog.testing.capture_logs() as logs:
            await client.send(bytes(login))
            await _until(lambda: running.server.counters["malformed"] == 1)
            await client.send(gt06_login("353419036066061", serial=4))
            reply = await client.read_exactly(10)
        await client.close()

        assert reply == gt06_ack(0x01, 4)
        [line] = [e for e in logs if e["event"] == "tracker_frame_malformed"]
        assert line["stage"] == "decode" and line["protocol"] == "gt06"

    async def test_absurd_length_closes_with_one_line(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        await running.register(TELTONIKA_IMEI)
        client = await TrackerClient.connect(running.port("teltonika"))
        await client.send(TELTONIKA_LOGIN)
        assert await client.read_exactly(1) == b"\x01"

        with structlog.testing.capture_logs() as logs:
            await client.send(bytes.fromhex("000000007fffffff08"))
            assert await client.closed() == b""

        [line] = [e for e in logs if e["event"] == "tracker_frame_malformed"]
        assert line["stage"] == "split" and line["device"] == TELTONIKA_IMEI

    async def test_a_stream_that_never_frames_is_cut_at_the_frame_limit(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        client = await TrackerClient.connect(running.port("watch"))
        limit = PROTOCOLS["watch"].session().max_frame_bytes

        with structlog.testing.capture_logs() as logs:
            await client.send(b"[SG*1*" + b"9" * (limit + 10))
            assert await client.closed() == b""

        [line] = [e for e in logs if e["event"] == "tracker_frame_malformed"]
        assert line["stage"] == "split"

    async def test_decoder_bug_drops_frame_and_server_lives_on(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers(protocols={"lines": LINES})
        await running.register("dev-1")
        client = await TrackerClient.connect(running.port("lines"))

        with structlog.testing.capture_logs() as logs:
            await client.send(b"dev-1\nboom\ndev-1\n")
            replies = await client.read_exactly(4)
        await client.close()

        assert replies == b"OKOK"  # the frame before and after the bug
        [line] = [e for e in logs if e["event"] == "tracker_decoder_failed"]
        assert line["reason"].startswith("ZeroDivisionError: ")
        assert "test_ingest_trackers.py:" in line["where"]

    async def test_many_malformed_frames_in_a_row_close_the_connection(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers(protocols={"lines": LINES})
        client = await TrackerClient.connect(running.port("lines"))

        await client.send(b"bad\n" * (MAX_MALFORMED_IN_A_ROW + 5))

        assert await client.closed() == b""
        assert running.server.counters["malformed"] == MAX_MALFORMED_IN_A_ROW

    async def test_unrecognised_first_bytes_logged_in_hex_and_closed(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers()
        client = await TrackerClient.connect(running.port("detect"))

        with structlog.testing.capture_logs() as logs:
            await client.send(b"\x16\x03\x01\x02\x00")  # a TLS ClientHello's start
            assert await client.closed() == b""

        [line] = [e for e in logs if e["event"] == "tracker_protocol_unrecognised"]
        assert line["first_bytes"] == "1603010200"


class TestIdle:
    async def test_silent_connection_is_closed_after_the_idle_timeout(
        self, start_trackers: StartTrackers
    ) -> None:
        running = await start_trackers(idle_timeout_s=0.5)
        client = await TrackerClient.connect(running.port("gt06"))
        started = time.monotonic()

        assert await client.closed(timeout_s=5) == b""

        assert 0.4 <= time.monotonic() - started < 3
        assert running.server.counters["idle_closed"] == 1


class TestSettings:
    def test_tracker_port_defaults_are_the_protocols_defaults(self) -> None:
        settings = load_settings({}, environ={})

        for name in PROTOCOL_MODULES:
            assert getattr(settings, f"{name}_port") == PROTOCOLS[name].default_port
        assert settings.detect_port == 5000
        assert settings.register_unknown is False
        assert settings.device_rate == 100.0
        assert settings.tracker_idle_timeout == 600.0

    def test_readme_port_table_matches_the_protocols(self) -> None:
        readme = (Path(__file__).parents[1] / "README.md").read_text()
        cells = [
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in readme.splitlines()
            if re.match(r"^\| `\w+` \| .* \| \d+ \|", line)
        ]

        table = {
            name.strip("`"): (int(port), tcp == "yes", udp == "yes")
            for name, _, port, tcp, udp in cells
        }

        assert table == {
            name: (protocol.default_port, protocol.tcp, protocol.udp)
            for name, protocol in PROTOCOLS.items()
        }
        assert "| detection | any of the above over TCP" in readme

    def test_register_unknown_is_a_switch_on_the_command_line(self) -> None:
        parser = argparse.ArgumentParser()
        add_setting_flags(parser)

        given = parser.parse_args(["--register-unknown", "--detect-port", "0"])
        absent = parser.parse_args([])

        settings = load_settings(flags_from_namespace(given), environ={})
        assert (settings.register_unknown, settings.detect_port) == (True, 0)
        environ = {"RASTRO_REGISTER_UNKNOWN": "true"}
        assert load_settings(
            flags_from_namespace(absent), environ=environ
        ).register_unknown

    def test_bad_boolean_and_rate_name_the_setting(self) -> None:
        with pytest.raises(
            SettingError, match="'register_unknown' must be true or false"
        ):
            load_settings({}, environ={"RASTRO_REGISTER_UNKNOWN": "maybe"})
        with pytest.raises(
            SettingError, match="'device_rate' must be a positive number"
        ):
            load_settings({}, environ={"RASTRO_DEVICE_RATE": "-1"})

    def test_tracker_ports_leave_out_the_protocols_turned_off(self) -> None:
        settings = load_settings({"gt06_port": "0", "h02_port": "6013"}, environ={})

        ports = tracker_ports(settings)

        assert "gt06" not in ports
        assert ports["h02"] == 6013
        assert ports["teltonika"] == 5027
        assert len(ports) == len(PROTOCOL_MODULES) - 1

    def test_tracker_settings_from_flags_and_environment(self) -> None:
        environ = {
            "RASTRO_REGISTER_UNKNOWN": "yes",
            "RASTRO_DEVICE_RATE": "2.5",
            "RASTRO_GT06_PORT": "0",
        }

        settings = load_settings({"tracker_idle_timeout": "30"}, environ=environ)

        assert settings.register_unknown is True
        assert settings.device_rate == 2.5
        assert settings.gt06_port == 0
        assert settings.tracker_idle_timeout == 30.0


# -- a protocol of the tests' own: one id per line, "boom" breaks its decoder --------


class _LinesSession(TrackerSession):
    protocol = "lines"
    max_frame_bytes = 64

    def split(self, buffer: bytearray) -> list[bytes]:
        frames = []
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            frames.append(line)
            buffer[:] = rest
        return frames

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        if frame == b"boom":
            return Decoded(device=str(1 // 0))
        if frame == b"bad":
            raise FrameError("bad is not a device")
        return Decoded(device=frame.decode(), reply=b"OK")


LINES = TrackerProtocol(
    name="lines",
    default_port=0,
    session=_LinesSession,
    looks_like=lambda first: False,
)


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    """Poll the server's counters until ``condition()`` holds."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 -- counters have no event to wait on
            await asyncio.sleep(0.01)


async def _read_all(client: TrackerClient, quiet_s: float) -> bytes:
    """Everything that arrives until ``quiet_s`` pass without a byte."""
    data = b""
    while True:
        try:
            async with asyncio.timeout(quiet_s):
                chunk = await client.reader.read(65536)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk
