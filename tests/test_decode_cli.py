"""``rastro decode``: the shared samples decoded offline, as the server decodes them.

Samples: /work/shared/protocols/samples.json (real packets from Traccar's decoder
tests, commit 9e5c458; each names its source file and line).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.model import format_time_ms, parse_time_ms
from tests.fixtures.trackers import (
    CORRUPT_SAMPLES,
    FRAME_ENDS,
    context_reply,
    corrupt_samples,
    load_samples,
    payload,
    teltonika_datagram,
    tracker_samples,
)

SERVER_TIME = "2025-01-02T03:04:05Z"
SAMPLES = tracker_samples()
HTTP_SAMPLES = [s for s in load_samples() if s["protocol"] == "osmand"]


def packet_options(sample: dict[str, Any]) -> list[str]:
    """The command-line options of a sample: its session context, then itself."""
    options: list[str] = []
    for packet in [*(sample["session_context"] or []), sample]:
        if packet.get("payload_hex"):
            options += ["--hex", packet["payload_hex"]]
        else:
            text = packet["payload_text"]
            end = FRAME_ENDS.get(sample["protocol"], b"").decode()
            text = text if text.endswith(end) else text + end
            options += ["--text", text.replace("\r", "\\r").replace("\n", "\\n")]
    return options


def expected_reply(sample: dict[str, Any]) -> str:
    """The ``reply:`` line the sample's payload must give."""
    expected = sample["expected"]
    if "ack_hex" in expected:
        return f"reply: {expected['ack_hex']}"
    if "ack_text" in expected:
        return f"reply: {expected['ack_text'].encode().hex()}"
    if "ack_text_pattern" in expected:
        clock = format_time_ms(parse_time_ms(SERVER_TIME))
        stamp = clock.replace("-", "").replace(":", "").replace("T", "")[:14]
        text = expected["ack_text_pattern"].replace(
            "<server UTC time yyyyMMddHHmmss>", stamp
        )
        return f"reply: {text.encode().hex()}"
    return "reply: none"


OWNTRACKS_SAMPLES = Path(__file__).parent / "data" / "ingest_owntracks_samples.json"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """Run ``rastro decode`` in process: exit code, stdout lines, stderr."""
    code = main(["decode", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def assert_position(line: str, record: dict[str, Any], imei: str) -> None:
    document = json.loads(line)
    assert set(document) >= {"uniqueId", "time", "latitude", "longitude", "valid"}
    assert "serverTime" not in document
    assert document["uniqueId"] == imei
    assert parse_time_ms(document["time"]) == parse_time_ms(record["time"])
    assert document["latitude"] == pytest.approx(record["latitude"], abs=1e-6)
    assert document["longitude"] == pytest.approx(record["longitude"], abs=1e-6)
    if "valid" in record:
        assert document["valid"] is record["valid"]
    if "speed_kmh" in record:
        assert document["speed"] == pytest.approx(record["speed_kmh"], abs=0.01)
    if "course" in record:
        assert document["course"] == pytest.approx(record["course"], abs=0.01)
    if "altitude" in record:
        assert document["altitude"] == pytest.approx(record["altitude"], abs=0.01)
    if "satellites" in record:
        assert document["satellites"] == record["satellites"]
    if "alarm" in record:
        assert document["attributes"]["alarm"] == record["alarm"]


class TestSamples:
    @pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
    def test_sample_prints_its_positions_and_reply(
        self, capsys: pytest.CaptureFixture[str], sample: dict[str, Any]
    ) -> None:
        code, lines, err = run(
            capsys,
            "--protocol",
            sample["protocol"],
            *packet_options(sample),
            "--server-time",
            SERVER_TIME,
        )

        assert (code, err) == (0, "")
        logins = sample["session_context"] or []
        context = len(logins)
        assert lines[:context] == [
            f"reply: {context_reply(sample, login).hex()}" for login in logins
        ]
        records = sample["expected"].get("all_records") or [sample["expected"]]
        positions = lines[context:-1]
        assert len(positions) == len(records)
        for line, record in zip(positions, records, strict=True):
            assert_position(line, record, sample["expected"]["imei"])
        assert lines[-1] == expected_reply(sample)

    def test_teltonika_login_reply_is_01(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, lines, _ = run(
            capsys,
            "--protocol",
            "teltonika",
            "--hex",
            "000f333536333037303432343431303133",
        )

        assert (code, lines) == (0, ["reply: 01"])

    def test_a_frame_split_over_two_packets_decodes_with_the_second(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        sample = SAMPLES[0]
        data = sample["payload_hex"]
        login = sample["session_context"][0]["payload_hex"]

        code, lines, _ = run(
            capsys,
            "--protocol",
            "teltonika",
            "--hex",
            login,
            "--hex",
            data[:30],
            "--hex",
            data[30:],
        )

        assert code == 0
        assert lines[:2] == ["reply: 01", "reply: none"]
        assert json.loads(lines[2])["uniqueId"] == "356307042441013"
        assert lines[3] == "reply: 00000001"

    def test_udp_datagram_gets_the_udp_reply(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        data = payload(SAMPLES[2])  # six records
        datagram = teltonika_datagram(data, "356307042441013", 0xCAFE, 7)

        code, lines, _ = run(
            capsys, "--protocol", "teltonika", "--udp", "--hex", datagram.hex()
        )

        assert code == 0
        assert len(lines) == 7
        assert lines[-1] == "reply: 0005cafe010706"

    def test_file_packet_is_read_whole(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        sample = next(s for s in SAMPLES if s["id"] == "watch-al")
        packet = tmp_path / "watch.bin"
        packet.write_bytes(payload(sample))

        code, lines, _ = run(capsys, "--protocol", "watch", "--file", str(packet))

        assert code == 0
        assert lines[-1] == "reply: " + b"[SG*9059011020*0002*AL]".hex()
        assert json.loads(lines[0])["attributes"]["alarm"] == "general"

    @pytest.mark.parametrize(
        "sample", HTTP_SAMPLES, ids=[s["id"] for s in HTTP_SAMPLES]
    )
    def test_osmand_request_prints_fix_and_http_status(
        self, capsys: pytest.CaptureFixture[str], sample: dict[str, Any]
    ) -> None:
        code, lines, _ = run(
            capsys,
            "--protocol",
            "osmand",
            "--text",
            sample["payload_text"],
            "--server-time",
            SERVER_TIME,
        )

        assert code == 0
        assert lines[-1] == f"reply: HTTP {sample['expected']['http_status']}"
        document = json.loads(lines[0])
        assert document["uniqueId"] == sample["expected"]["imei"]
        assert document["latitude"] == pytest.approx(sample["expected"]["latitude"])
        if "time" not in sample["expected"]:  # no timestamp: the receive time
            assert document["time"] == SERVER_TIME

    def test_owntracks_body_prints_fix_of_its_topic(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        samples = json.loads(OWNTRACKS_SAMPLES.read_text())["samples"]
        sample = next(s for s in samples if s["id"] == "traccar-http-location-topic")
        expected = sample["expected"]

        code, lines, _ = run(
            capsys, "--protocol", "owntracks", "--text", sample["payload_text"]
        )

        assert code == 0
        assert lines[-1] == "reply: HTTP 200"
        document = json.loads(lines[0])
        assert document["uniqueId"] == expected["device"]
        assert document["latitude"] == pytest.approx(expected["latitude"])
        assert document["longitude"] == pytest.approx(expected["longitude"])
        assert parse_time_ms(document["time"]) == expected["time_ms"]


class TestBadInput:
    def test_bad_hex_exits_2_with_one_line(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, lines, err = run(capsys, "--protocol", "gt06", "--hex", "7878zz")

        assert (code, lines) == (2, [])
        assert err.count("\n") == 1
        assert err.startswith(
            "rastro decode: packet 1: --hex '7878zz' is not hexadecimal"
        )

    @pytest.mark.parametrize(
        "sample", corrupt_samples(), ids=[s["id"] for s in corrupt_samples()]
    )
    def test_corrupt_sample_exits_2_with_the_reason(
        self, capsys: pytest.CaptureFixture[str], sample: dict[str, Any]
    ) -> None:
        code, lines, err = run(
            capsys, "--protocol", sample["protocol"], *packet_options(sample)
        )

        assert code == 2
        assert lines == [
            "reply: " + context_reply(sample, sample["session_context"][0]).hex()
        ]
        assert err.startswith(
            f"rastro decode: packet 2: {CORRUPT_SAMPLES[sample['id']]}"
        )

    def test_refused_frame_exits_2_naming_the_packet(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(
            capsys, "--protocol", "tk103", "--text", "(088045133878BR00)", "--hex", "00"
        )

        assert code == 2
        assert err.startswith("rastro decode: packet ")
        assert err.count("\n") == 1

    def test_incomplete_frame_at_the_end_exits_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, lines, err = run(capsys, "--protocol", "watch", "--text", "[SG*1*0002*L")

        assert code == 2
        assert lines == ["reply: none"]
        assert "12 bytes at the end do not complete a watch frame" in err

    def test_unknown_protocol_exits_2_listing_the_known(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, "--protocol", "nmea", "--text", "$GPRMC")

        assert code == 2
        assert "cannot decode protocol 'nmea'; known: teltonika, gt06" in err

    def test_udp_for_a_tcp_only_protocol_exits_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, "--protocol", "gt06", "--udp", "--hex", "7878")

        assert code == 2
        assert "protocol 'gt06' does not speak UDP" in err

    def test_bad_osmand_request_exits_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, "--protocol", "osmand", "--text", "/?lat=1&lon=2")

        assert code == 2
        assert "packet 1: id (or deviceid) is required" in err


def test_console_script_decodes_a_sample() -> None:
    sample = next(s for s in SAMPLES if s["id"] == "tk103-bp05-south-west")
    rastro = Path(sys.executable).parent / "rastro"

    done = subprocess.run(
        [
            str(rastro),
            "decode",
            "--protocol",
            "tk103",
            "--text",
            sample["payload_text"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    position, reply = done.stdout.splitlines()
    assert json.loads(position)["uniqueId"] == "012345678901"
    assert reply == "reply: " + b"(012345678901AP05)".hex()
