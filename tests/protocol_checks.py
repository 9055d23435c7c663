"""What the tests of every tracker protocol check the same way, written once.

Each ``tests/test_protocol_<name>.py`` keeps its protocol's real packets and every
value they decode to.  What does not depend on the protocol lives here: loading
the samples, splitting a TCP stream read in any pieces (:class:`FramingChecks`),
mutating valid frames for the Hypothesis properties, feeding hostile bytes
through split and decode (:func:`exercise`), the first bytes of the other
protocols that detection must not claim, and the throughput report.

Samples: ``tests/data/protocol_samples.json``, real packets from Traccar's decoder
tests, each naming its source (a copy of ``/work/shared/protocols/samples.json``);
``tests/data/protocol_<name>_packets.json``, more packets per protocol, each with
its source.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.framing import TrackerStream
from pipeline.ingest.protocols.base import (
    Decoded,
    FrameError,
    TrackerProtocol,
    TrackerSession,
)
from pipeline.model import Fix, fix_to_json, parse_time_ms

__all__ = [
    "ANY_BYTES",
    "NOW_MS",
    "SETTINGS",
    "FramingChecks",
    "HostileInputChecks",
    "Mutation",
    "assert_deterministic",
    "assert_packet",
    "assert_refused_after_frames",
    "assert_registered",
    "assert_sample",
    "assert_sample_fix",
    "attribute_values",
    "data_packets",
    "decode_one",
    "decoding",
    "exercise",
    "fix_view",
    "mutate",
    "mutated",
    "one_byte_chunks",
    "others_first_bytes",
    "payload",
    "random_chunks",
    "report_throughput",
    "sample_reply",
    "shared_samples",
    "split_chunks",
]

DATA = Path(__file__).parent / "data"
#: Knots on the wire of many protocols; km/h in every fix.
KNOTS_TO_KMH = 1.852
#: The receive time every test decodes at (2025-10-09T08:53:20Z).
NOW_MS = 1_760_000_000_000
#: Hypothesis settings of the property tests: decoding is slow to start (caches).
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: The same for the property tests of the shared check classes, which every
#: protocol's test class runs in turn.
SHARED_SETTINGS = settings(
    SETTINGS,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)


# ------------------------------------------------------------------ samples


def shared_samples(protocol: str) -> dict[str, dict[str, Any]]:
    """The shared samples of ``protocol``, by id, in the file's order."""
    samples = json.loads((DATA / "protocol_samples.json").read_text())
    return {
        sample["id"]: sample for sample in samples if sample["protocol"] == protocol
    }


def data_packets(protocol: str) -> dict[str, dict[str, Any]]:
    """The packets of ``tests/data/protocol_<protocol>_packets.json``, by id."""
    path = DATA / f"protocol_{protocol}_packets.json"
    return {packet["id"]: packet for packet in json.loads(path.read_text())["packets"]}


def payload(entry: Mapping[str, Any]) -> bytes:
    """The bytes of a sample or packet: its hex payload, or its ASCII text."""
    if entry.get("payload_hex"):
        return bytes.fromhex(entry["payload_hex"])
    return str(entry["payload_text"]).encode("ascii")


def attribute_values(fix: Fix) -> dict[str, Any]:
    """A fix's attributes with their JSON values decoded."""
    return {key: json.loads(value) for key, value in fix.attributes.items()}


def fix_view(fix: Fix) -> dict[str, Any]:
    """Every decoded value of a fix, as the packet files write it."""
    view = fix_to_json(fix)
    del view["serverTime"], view["uniqueId"]
    return view


def assert_sample(
    decoded: Decoded, sample: Mapping[str, Any], *, names_device: bool = True
) -> None:
    """Every value a shared sample expects: the device, each record's fix, the
    alarm (attribute and event) where it names one, and the exact reply.

    ``names_device`` is false for protocols whose data frames rely on a login.
    """
    expected = sample["expected"]
    records = expected.get("all_records", [expected])
    assert decoded.device == (expected["imei"] if names_device else None)
    assert len(decoded.fixes) == expected.get("records", 1) == len(records)
    for fix, record in zip(decoded.fixes, records, strict=True):
        assert fix.device == expected["imei"]
        assert fix.protocol == sample["protocol"]
        assert_sample_fix(fix, record)
    if "alarm" in expected:
        alarms = [json.loads(event.attributes["alarm"]) for event in decoded.events]
        assert alarms == [expected["alarm"]]
    assert decoded.reply == sample_reply(expected)


def assert_sample_fix(fix: Fix, expected: Mapping[str, Any]) -> None:
    """A fix holds a sample record's values; what the record leaves out is unset.

    Speed, course and altitude are 32-bit floats in a fix, hence the tolerance.
    """
    assert fix.server_time_ms == NOW_MS
    assert fix.fix_time_ms == parse_time_ms(expected["time"])
    assert fix.latitude == pytest.approx(expected["latitude"], abs=5e-7)
    assert fix.longitude == pytest.approx(expected["longitude"], abs=5e-7)
    assert fix.valid is expected["valid"]
    assert fix.speed_kmh == pytest.approx(expected["speed_kmh"], abs=1e-4)
    if "speed_knots" in expected:
        knots = expected["speed_knots"] * KNOTS_TO_KMH
        assert fix.speed_kmh == pytest.approx(knots, abs=1e-3)
    for name in ("course", "altitude", "satellites"):
        if name in expected:
            assert getattr(fix, name) == pytest.approx(expected[name], abs=1e-4)
        else:
            assert not fix.HasField(name)

    attributes = attribute_values(fix)
    for key, name in (
        ("battery_level", "batteryLevel"),
        ("ignition", "ignition"),
        ("alarm", "alarm"),
    ):
        if key in expected:
            assert attributes[name] == expected[key]


def sample_reply(expected: Mapping[str, Any]) -> bytes | None:
    """The reply a shared sample expects, at :data:`NOW_MS` where it holds a time."""
    if "ack_hex" in expected:
        return bytes.fromhex(expected["ack_hex"])
    if "ack_text" in expected:
        return str(expected["ack_text"]).encode("ascii")
    if "ack_text_pattern" in expected:
        now = time.strftime("%Y%m%d%H%M%S", time.gmtime(NOW_MS // 1000))
        pattern = str(expected["ack_text_pattern"])
        return pattern.replace("<server UTC time yyyyMMddHHmmss>", now).encode()
    assert expected["ack_expected"] is False
    return None


def assert_packet(decoded: Decoded, expected: Mapping[str, Any]) -> None:
    """A packet file's ``expected``: device, every fix's values, alarms, reply."""
    assert decoded.device == expected["device"]
    assert [fix_view(fix) for fix in decoded.fixes] == expected["fixes"]
    alarms = [json.loads(event.attributes["alarm"]) for event in decoded.events]
    assert alarms == expected["alarms"]
    reply = expected["reply_text"]
    assert decoded.reply == (None if reply is None else reply.encode())


# ------------------------------------------------------------------ framing


def split_chunks(session: TrackerSession, chunks: Iterable[bytes]) -> list[bytes]:
    """The frames ``session`` splits from ``chunks`` read in order, as the server
    reads them (through :class:`TrackerStream`); no byte may be left over."""
    stream = TrackerStream(session)
    frames = []
    for chunk in chunks:
        frames += stream.feed(chunk)
    assert not stream.buffer
    return frames


def one_byte_chunks(data: bytes) -> list[bytes]:
    """``data`` read one byte at a time."""
    return [data[index : index + 1] for index in range(len(data))]


def random_chunks(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at 1 to 30 random places (fewer when it is shorter)."""
    rng = random.Random(seed)
    cuts = sorted(
        rng.sample(range(1, len(data)), min(rng.randint(1, 30), len(data) - 1))
    )
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


def decode_one(
    session: TrackerSession, frame: bytes, *, server_time_ms: int = NOW_MS
) -> Decoded:
    """Decode ``frame``, which must split as one whole frame and nothing more."""
    assert split_chunks(session, [frame]) == [frame]
    return session.decode(frame, server_time_ms=server_time_ms)


class FramingChecks:
    """A TCP stream gives the same frames however it is read.

    A test class sets :attr:`frames` (a stream's frames in order), :attr:`separator`
    (bytes a device sends between and after frames, which split drops) and
    :attr:`session_type`.
    """

    frames: ClassVar[list[bytes]]
    separator: ClassVar[bytes] = b""
    session_type: ClassVar[Callable[[], TrackerSession]]

    def new_session(self) -> TrackerSession:
        """A fresh session of the class's :attr:`session_type`."""
        return type(self).session_type()

    @property
    def stream(self) -> bytes:
        return self.separator.join(self.frames) + self.separator

    def test_merged_in_one_read(self) -> None:
        """Every frame of the stream read at once comes out, in order."""
        assert split_chunks(self.new_session(), [self.stream]) == self.frames

    def test_one_byte_at_a_time(self) -> None:
        """The stream fed byte by byte gives the same frames."""
        chunks = one_byte_chunks(self.stream)

        assert split_chunks(self.new_session(), chunks) == self.frames

    @pytest.mark.parametrize("seed", range(10))
    def test_random_chunks(self, seed: int) -> None:
        """The stream cut at random places gives the same frames."""
        chunks = random_chunks(self.stream, seed)

        assert split_chunks(self.new_session(), chunks) == self.frames


# ------------------------------------------------------------ hostile input

#: Byte-level mutations of :func:`mutate`.
MUTATIONS = ("flip", "insert", "delete", "truncate")
#: Draws a value from a strategy: a composite's ``draw`` or ``st.data()``'s.
Draw = Callable[[st.SearchStrategy[Any]], Any]
#: A protocol's own mutation: changes the bytes in place, drawing what it needs.
Mutation = Callable[[Draw, bytearray], None]
#: What :func:`mutate` inserts unless told otherwise.
ANY_BYTES = st.binary(min_size=1, max_size=8)


def mutate(
    draw: Draw,
    data: bytes,
    *,
    inserted: st.SearchStrategy[bytes] = ANY_BYTES,
    extra: Mapping[str, Mutation] | None = None,
) -> bytes:
    """``data`` after 1 to 4 mutations: a bit flipped, bytes inserted (drawn from
    ``inserted``, 1 to 8 random ones by default), 1 to 8 bytes deleted, the rest
    cut off, or one of the protocol's ``extra`` mutations (absurd length fields).
    """
    raw = bytearray(data)
    extra = extra or {}
    operations = st.sampled_from((*MUTATIONS, *extra))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        operation = draw(operations)
        if operation == "flip" and at < len(raw):
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            raw[at:at] = draw(inserted)
        elif operation == "delete":
            del raw[at : at + draw(st.integers(1, 8))]
        elif operation == "truncate":
            del raw[at:]
        elif operation in extra:
            extra[operation](draw, raw)
    return bytes(raw)


@st.composite
def mutated(
    draw: st.DrawFn,
    frames: st.SearchStrategy[bytes],
    *,
    inserted: st.SearchStrategy[bytes] = ANY_BYTES,
    extra: Mapping[str, Mutation] | None = None,
) -> bytes:
    """A frame drawn from ``frames``, mutated by :func:`mutate`."""
    return mutate(draw, draw(frames), inserted=inserted, extra=extra)


def exercise(session: TrackerSession, *chunks: bytes) -> list[Decoded]:
    """Feed ``chunks`` in turn through split and decode, as the server would.

    Only :class:`FrameError` may be raised: from split it ends the stream (the
    server closes the connection), from decode it drops that frame.  The buffer
    never keeps more than the session's ``max_frame_bytes``.  Returns what
    decoded.
    """
    buffer = bytearray()
    decoded: list[Decoded] = []
    for chunk in chunks:
        buffer += chunk
        try:
            frames = session.split(buffer)
        except FrameError:
            return decoded
        assert len(buffer) <= session.max_frame_bytes
        for frame in frames:
            with suppress(FrameError):
                decoded.append(session.decode(frame, server_time_ms=NOW_MS))
    return decoded


def assert_refused_after_frames(
    session: TrackerSession, frames: list[bytes], garbage: bytes, reason: str
) -> None:
    """Complete frames before ``garbage`` come out first, ``garbage`` stays (at most
    ``max_frame_bytes`` of it) and the next split refuses it with ``reason``: the
    server answers the frames the device sent intact, then closes."""
    buffer = bytearray(b"".join(frames) + garbage)

    assert session.split(buffer) == frames
    assert buffer == garbage[: session.max_frame_bytes]
    with pytest.raises(FrameError, match=reason):
        session.split(buffer)


def assert_deterministic(
    new_session: Callable[[], TrackerSession], frame: bytes
) -> None:
    """Two fresh sessions decode ``frame`` to equal results."""
    first = new_session().decode(frame, server_time_ms=NOW_MS)
    second = new_session().decode(frame, server_time_ms=NOW_MS)

    assert first == second


class HostileInputChecks:
    """Hostile bytes are refused with :class:`FrameError` and nothing else, the
    buffer stays bounded, and valid frames decode the same every time.

    A test class sets :attr:`valid_frames` and :attr:`session_type` (a session
    ready for any frame: logged in where the protocol needs it); :attr:`mutations`
    and :attr:`inserted` add the protocol's own kinds of damage (see
    :func:`mutate`).  :meth:`check` is what every hostile input goes through.
    """

    valid_frames: ClassVar[list[bytes]]
    session_type: ClassVar[Callable[[], TrackerSession]]
    mutations: ClassVar[Mapping[str, Mutation]] = {}
    inserted: ClassVar[st.SearchStrategy[bytes]] = ANY_BYTES

    def new_session(self) -> TrackerSession:
        """A fresh session of the class's :attr:`session_type`."""
        return type(self).session_type()

    def check(self, data: bytes, cut: int = 0) -> None:
        """Split and decode ``data`` read in two pieces (cut at ``cut``), and
        decode it whole as a frame and as a datagram: only FrameError is raised."""
        exercise(self.new_session(), data[:cut], data[cut:])
        with suppress(FrameError):
            self.new_session().decode(data, server_time_ms=NOW_MS)
        with suppress(FrameError):
            self.new_session().decode_datagram(data, server_time_ms=NOW_MS)

    @SHARED_SETTINGS
    @given(data=st.binary(max_size=3000), cut=st.integers(0, 3000))
    def test_random_bytes_raise_only_frame_errors(self, data: bytes, cut: int) -> None:
        """Random bytes, read in two pieces, only ever raise FrameError."""
        self.check(data, cut)

    @SHARED_SETTINGS
    @given(st.data())
    def test_mutated_frames_raise_only_frame_errors(self, data: st.DataObject) -> None:
        """One to three valid frames, mutated, only ever raise FrameError."""
        frames = st.lists(st.sampled_from(self.valid_frames), min_size=1, max_size=3)
        damaged = mutate(
            data.draw,
            b"".join(data.draw(frames)),
            inserted=self.inserted,
            extra=self.mutations,
        )

        self.check(damaged, data.draw(st.integers(0, len(damaged))))

    def test_decode_is_deterministic(self) -> None:
        """Every valid frame decodes to the same result in two fresh sessions."""
        for frame in self.valid_frames:
            assert_deterministic(self.new_session, frame)


# ---------------------------------------------------------------- detection

#: First bytes of the protocols, from their documents and Traccar's tests, and
#: of things that are no tracker protocol: detection must claim only its own.
OPENINGS: dict[str, list[bytes]] = {
    "teltonika": [
        b"\x00\x0f356307042441013",
        bytes.fromhex("000000000000003608010000016b40d8ea30010000000000000000"),
    ],
    "gt06": [
        b"\x78\x78\x11\x01\x03\x51\x60\x80\x80\x77\x92\x88",
        bytes.fromhex("78780d010123456789012345000139b40d0a"),
        bytes.fromhex("78780d0103534190360660610003c3df0d0a"),
    ],
    "h02": [
        b"*HQ,4210051415,V1,164549,A,2240.8192,N,11359.1776,E,0.00,0.00,",
        b"*HQ,865205030330012,V1,145452,A,2240.55181,N,11358.32389,E,0.00,0.00,",
        b"*HQ,4970105243,V1,104000,A#",
        b"*HQ,865205030330012,V1,",
    ],
    "gps103": [
        b"##,imei:359586015829802,A;",
        b"imei:359710049090138,tracker,160629022948,,F,",
        b"imei:359586015829802,tracker,1008281456,,F,",
    ],
    "tk103": [
        b"(088045133878BR00130228A5124.5526N00117.7152W",
        b"(027028641389BP05000027028641389110905A3114.5366N12126.5862E",
        b"(027028258309BP05000027028258309120328A2934.0133N10627.2544E",
    ],
    "gl200": [
        b"+RESP:GTFRI,5E0100,861971050039361,,,,10,1,1,",
        b"+RESP:GTFRI,060228,862894020180553,,0,0,1,1,4.3,92,70.0,121.354335,",
        b"+RESP:GTFRI,020102,135790246811220,,0,0,1,1,4.3,92,70.0,",
    ],
    "meitrack": [
        b"$$A138,862170013556541,AAA,35,7.092076,79.960473,",
        b"$$T143,869013024733944,AAA,1,18.459575,-69.947161,170220142912,A,5,",
        b"$$A135,864507032228727,AAA,35,24.819116,121.026091,",
        b"$$A35,",
    ],
    "watch": [
        b"[3G*1451316409*0002*LK]",
        b"[3G*2104326058*00E9*UD_LTE,300621,135101,A,32.162652,N,34.888748,E",
        b"[3G*1234567890*0009*LK,0,0,100]",
    ],
    "suntech": [
        b"ST300STT;100850000;04;274;20080723;09:57:33;",
        b"STT;100850000;3FFFFF;95;1.0.21;1;20080723;",
        b"ST300STT;109002029;08;1080;20190220;13:00:55;85405;+04.645710;",
    ],
    "other": [
        b"GET /?id=123456&lat=1 HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\n",
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394",
    ],
}


def others_first_bytes(protocol: str) -> list[bytes]:
    """The first bytes of every other protocol: its openings and samples."""
    openings = [
        data for name, listed in OPENINGS.items() if name != protocol for data in listed
    ]
    samples = json.loads((DATA / "protocol_samples.json").read_text())
    for sample in samples:
        if sample["protocol"] != protocol:
            for entry in [*(sample["session_context"] or []), sample]:
                openings.append(payload(entry)[:64])
    return openings


def assert_registered(
    protocol: TrackerProtocol,
    name: str,
    session: type[TrackerSession],
    *,
    port: int,
    tcp: bool,
    udp: bool,
    text: bool,
) -> None:
    """The protocol's entry: name, default port, transports, session type."""
    assert protocol.name == name == session.protocol
    assert protocol.default_port == port
    assert (protocol.tcp, protocol.udp, protocol.text) == (tcp, udp, text)
    assert isinstance(protocol.session(), session)


# --------------------------------------------------------------- throughput


def report_throughput(
    benchmark: Any,
    decode_all: Callable[[], int],
    *,
    records: int,
    label: str,
    rounds: int = 3,
) -> None:
    """Time ``decode_all`` (which returns the records it decoded) and print the
    records per second; with ``--benchmark-disable`` it runs once, untimed."""
    started = time.perf_counter()
    decoded = benchmark.pedantic(decode_all, rounds=rounds, iterations=1)
    elapsed = time.perf_counter() - started

    assert decoded == records
    if benchmark.disabled:
        print(f"\n{label} (one untimed round): {records / elapsed:,.0f} records/s")
        return
    mean = benchmark.stats.stats.mean
    print(
        f"\n{label}: {records / mean:,.0f} records/s "
        f"({mean / records * 1e6:.2f} us each, mean of {rounds})"
    )


def decoding(session: TrackerSession, frames: list[bytes]) -> Callable[[], int]:
    """A run for :func:`report_throughput`: decode every frame, count the fixes."""
    decode = session.decode

    def run() -> int:
        return sum(len(decode(frame, server_time_ms=NOW_MS).fixes) for frame in frames)

    return run
