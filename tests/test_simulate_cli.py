"""The simulator against real servers: an HTTP API of the contract, and mosquitto.

The HTTP side is a small Starlette app implementing the part of Rastro's API the
simulator uses (session, devices, positions), served by Hypercorn on a free port,
with a switch that answers 503 for a number of requests.  The MQTT side is Debian's
mosquitto on a free port with a subscriber counting what arrives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.model import Fix as FixMessage
from pipeline.model import FixBatch, FixError, fix_from_json
from pipeline.ports import free_port
from pipeline.services.mqtt import SystemMosquitto
from pipeline.simulate import (
    RateSample,
    SimulatorError,
    parse_center,
    parse_mqtt_url,
    run_simulation,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "simulator-test-token"
USER, PASSWORD = "admin", "correct horse"


@dataclass
class ContractServer:
    """What the test API received, and the switch making it answer 503."""

    url: str = ""
    devices: set[str] = field(default_factory=set)
    fixes: list[dict[str, Any]] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    http_versions: set[str] = field(default_factory=set)
    unavailable_for: int = 0
    answered_503: int = 0
    logins: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"


def _contract_app(server: ContractServer) -> Starlette:
    async def session(request: Request) -> Response:
        body = await request.json()
        if body.get("user") != USER or body.get("password") != PASSWORD:
            return JSONResponse({"error": "wrong user or password"}, status_code=401)
        server.logins += 1
        return JSONResponse({"token": TOKEN})

    async def devices(request: Request) -> Response:
        if not server.authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        unique_id = (await request.json())["uniqueId"]
        if unique_id in server.devices:
            return JSONResponse({"error": "exists"}, status_code=409)
        server.devices.add(unique_id)
        return JSONResponse({"uniqueId": unique_id}, status_code=201)

    async def positions(request: Request) -> Response:
        server.http_versions.add(request.scope["http_version"])
        if not server.authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if server.unavailable_for > 0:
            server.unavailable_for -= 1
            server.answered_503 += 1
            return JSONResponse({"error": "busy"}, status_code=503)
        content_type = request.headers.get("content-type", "")
        server.content_types.add(content_type)
        documents = _documents(content_type, await request.body())
        rejected, statuses = [], set()
        for index, document in enumerate(documents):
            try:
                fix_from_json(document, server_time_ms=int(time.time() * 1000))
            except FixError as error:
                rejected.append({"index": index, "reason": str(error)})
                statuses.add(400)
                continue
            if document["uniqueId"] in server.refused:
                rejected.append({"index": index, "reason": "refused"})
                statuses.add(server.refused[document["uniqueId"]])
                continue
            server.fixes.append(document)
            server.received.set()
        accepted = len(documents) - len(rejected)
        if not rejected:
            return JSONResponse({"accepted": accepted})
        # As Rastro's ingest: 429 when every refusal is a rate limit, else 400.
        status = 429 if statuses == {429} else 400
        return JSONResponse(
            {"accepted": accepted, "rejected": rejected}, status_code=status
        )

    routes = [
        Route("/api/v1/session", session, methods=["POST"]),
        Route("/api/v1/devices", devices, methods=["POST"]),
        Route("/api/v1/positions", positions, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _documents(content_type: str, body: bytes) -> list[dict[str, Any]]:
    if content_type == "application/x-protobuf":
        batch = FixBatch.FromString(body)
        return [_protobuf_document(fix) for fix in batch.fixes]
    documents: list[dict[str, Any]] = json.loads(body)
    return documents


def _protobuf_document(fix: FixMessage) -> dict[str, Any]:
    return {
        "uniqueId": fix.device,
        "time": None,
        "latitude": fix.latitude,
        "longitude": fix.longitude,
        "speed": fix.speed_kmh,
        "attributes": {key: json.loads(v) for key, v in fix.attributes.items()},
    }


@pytest_asyncio.fixture
async def api() -> AsyncIterator[ContractServer]:
    """The contract API on a free loopback port, served by Hypercorn."""
    server = ContractServer()
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    stopped = asyncio.Event()
    app = _contract_app(server)
    serving = asyncio.create_task(
        serve(app, config, shutdown_trigger=stopped.wait)  # type: ignore[arg-type]
    )
    server.url = f"http://127.0.0.1:{port}"
    await _wait_for_port(port)
    try:
        yield server
    finally:
        stopped.set()
        await asyncio.wait_for(serving, 10)


async def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


@pytest.mark.integration
class TestRunSimulationHttp:
    async def test_http_every_fix_acknowledged(self, api):
        """Every fix sent arrives valid and is counted as acknowledged."""
        report = await run_simulation(
            api.url, devices=20, token=TOKEN, interval_s=0.2, duration_s=1.1
        )
        assert report.sent >= 20 * 5
        assert report.acknowledged == report.sent == len(api.fixes)
        assert report.rejected == report.errors == report.dropped == 0
        assert {fix["uniqueId"] for fix in api.fixes} == {
            f"sim-{n:06d}" for n in range(1, 21)
        }
        assert api.content_types == {"application/json"}
        assert api.http_versions == {"1.1"}

    async def test_http_fix_in_api_form(self, api):
        """A posted fix carries every field of the API's JSON form."""
        await run_simulation(api.url, devices=2, token=TOKEN, duration_s=0.3)
        fix = api.fixes[0]
        assert set(fix) == {
            "uniqueId",
            "time",
            "latitude",
            "longitude",
            "speed",
            "course",
            "altitude",
            "accuracy",
            "satellites",
            "attributes",
        }
        assert fix["time"].endswith("Z")
        assert abs(fix["latitude"] - 40.4168) < 0.05
        assert set(fix["attributes"]) == {"ignition", "odometer", "battery"}

    async def test_http_retries_503(self, api):
        """Answers of 503 are counted as errors and the batches retried until taken."""
        api.unavailable_for = 4
        report = await run_simulation(
            api.url, devices=10, token=TOKEN, interval_s=0.2, duration_s=1.0
        )
        assert api.answered_503 == 4
        assert report.errors == 4
        assert report.acknowledged == report.sent == len(api.fixes)
        assert report.dropped == 0

    @pytest.mark.parametrize("status", [400, 429])
    async def test_http_partial_rejection_split(self, api, status):
        """A 400 or 429 ingest result counts its accepted and rejected fixes apart.

        Nothing is retried: the accepted part is stored already.
        """
        api.refused = {"sim-000002": status}
        report = await run_simulation(
            api.url, devices=4, token=TOKEN, interval_s=0.2, duration_s=0.9
        )
        assert report.rejected == report.sent // 4 > 0
        assert report.acknowledged == len(api.fixes) == report.sent * 3 // 4
        assert report.errors == report.dropped == 0

    async def test_http_connection_refused_counted(self):
        """With nothing listening, attempts fail and are counted; nothing raises."""
        report = await run_simulation(
            f"http://127.0.0.1:{free_port()}",
            devices=5,
            token=TOKEN,
            interval_s=0.2,
            duration_s=0.6,
        )
        assert report.errors >= 2
        assert report.acknowledged == 0
        assert report.dropped == report.sent > 0

    async def test_http_logs_in_with_password(self, api):
        """User and password are traded for the token the API then accepts."""
        report = await run_simulation(
            api.url, devices=3, user=USER, password=PASSWORD, duration_s=0.3
        )
        assert api.logins == 1
        assert report.acknowledged == report.sent > 0

    async def test_http_wrong_password_refused(self, api):
        """A refused login ends the run with an error naming the user."""
        with pytest.raises(SimulatorError, match="logging in as 'admin' failed"):
            await run_simulation(
                api.url, devices=3, user=USER, password="wrong", duration_s=0.3
            )

    async def test_http_without_token_rejected(self, api):
        """Without credentials the API's 401 makes every fix rejected."""
        report = await run_simulation(api.url, devices=3, duration_s=0.3)
        assert report.rejected == report.sent > 0
        assert report.acknowledged == 0

    async def test_http_register_creates_devices(self, api):
        """--register creates each device once; a second run meets 409 and goes on."""
        first = await run_simulation(
            api.url, devices=12, token=TOKEN, register=True, duration_s=0.3
        )
        second = await run_simulation(
            api.url, devices=12, token=TOKEN, register=True, duration_s=0.3
        )
        assert api.devices == {f"sim-{n:06d}" for n in range(1, 13)}
        assert (first.registered, second.registered) == (12, 0)
        assert second.acknowledged == second.sent > 0

    async def test_http_protobuf_batches(self, api):
        """The protobuf format posts FixBatch bodies with the protobuf content type."""
        report = await run_simulation(
            api.url,
            devices=7,
            token=TOKEN,
            wire_format="protobuf",
            batch_size=3,
            duration_s=0.3,
        )
        assert api.content_types == {"application/x-protobuf"}
        assert report.acknowledged == report.sent == len(api.fixes) == 7
        assert api.fixes[0]["attributes"]["ignition"] in (True, False)

    async def test_http2_prior_knowledge(self, api):
        """With http2 the simulator speaks HTTP/2 over cleartext (h2c).

        Batches of 800 fixes exceed one flow-control window and go out halved.
        """
        report = await run_simulation(
            api.url,
            devices=800,
            token=TOKEN,
            http2=True,
            batch_size=800,
            interval_s=0.3,
            duration_s=1.0,
        )
        assert api.http_versions == {"2"}
        assert report.acknowledged == report.sent == len(api.fixes) >= 1600

    async def test_http_progress_reported(self, api):
        """Progress samples arrive at the set period with per-second rates."""
        samples: list[RateSample] = []
        await run_simulation(
            api.url,
            devices=10,
            token=TOKEN,
            interval_s=0.1,
            duration_s=1.3,
            on_progress=samples.append,
            progress_every_s=0.4,
        )
        assert 2 <= len(samples) <= 4
        assert samples[-1].report.acknowledged >= samples[0].report.acknowledged
        assert samples[0].acknowledged / samples[0].interval_s > 30
        assert "acknowledged" in samples[0].line()
        assert "/s)" in samples[0].line()

    async def test_http_stop_event_ends_run(self, api):
        """Setting the stop event ends a run that has no duration."""
        stop = asyncio.Event()
        running = asyncio.create_task(
            run_simulation(api.url, devices=3, token=TOKEN, interval_s=0.1, stop=stop)
        )
        await asyncio.sleep(0.5)
        stop.set()
        report = await asyncio.wait_for(running, 10)
        assert report.acknowledged == report.sent > 0

    async def test_http_rate_with_many_vehicles(self, api):
        """2,000 vehicles at 1 Hz reach the server; prints the rate achieved."""
        report = await run_simulation(
            api.url, devices=2000, token=TOKEN, interval_s=1.0, duration_s=3.0
        )
        print(f"\nsimulate http: {report.summary()}")
        assert report.acknowledged == report.sent >= 4000

    @pytest.mark.parametrize(
        ("arguments", "match"),
        [
            ({"devices": 0}, "devices must be at least 1"),
            ({"interval_s": 0.0}, "interval must be between"),
            ({"duration_s": -1.0}, "duration must be positive"),
            ({"batch_size": 0}, "batch_size must be at least 1"),
            ({"via": "carrier-pigeon"}, "via must be 'http' or 'mqtt'"),
            ({"wire_format": "xml"}, "format must be 'json' or 'protobuf'"),
        ],
    )
    async def test_run_bad_arguments_named(self, arguments, match):
        """Each unusable argument is refused before anything is sent."""
        with pytest.raises(ValueError, match=match):
            await run_simulation("http://127.0.0.1:1", **arguments)

    async def test_run_bad_server_url(self):
        """A server that is not an http:// URL is refused."""
        with pytest.raises(ValueError, match="must look like http://HOST:PORT"):
            await run_simulation("ftp://example", duration_s=0.1)


class TestParsing:
    def test_parse_center_reads_lat_lon(self):
        """LAT,LON becomes a pair of floats."""
        assert parse_center("41.39,2.17") == (41.39, 2.17)

    @pytest.mark.parametrize("text", ["41.39", "north,east", "95,2", "1,2,3"])
    def test_parse_center_bad_text(self, text):
        """Anything but two numbers in range is refused naming --center."""
        with pytest.raises(ValueError, match="--center must be"):
            parse_center(text)

    def test_parse_mqtt_url_default_port(self):
        """mqtt://HOST without a port means 1883."""
        assert parse_mqtt_url("mqtt://broker") == ("broker", 1883)
        assert parse_mqtt_url("mqtt://127.0.0.1:2000") == ("127.0.0.1", 2000)

    def test_parse_mqtt_url_bad_scheme(self):
        """Anything but mqtt:// is refused."""
        with pytest.raises(ValueError, match="must look like mqtt://HOST:PORT"):
            parse_mqtt_url("http://broker:1883")


# The command in a child process ----------------------------------------------


async def _simulate_command(*arguments: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RASTRO_TOKEN": ""}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline.cli",
        "simulate",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=PROJECT_ROOT,
    )


@pytest.mark.integration
class TestSimulateCommand:
    async def test_command_prints_summary(self, api):
        """`rastro simulate` runs for --duration and prints the final summary."""
        child = await _simulate_command(
            "--server", api.url, "--token", TOKEN, "--devices", "5",
            "--interval", "0.2", "--duration", "1.5", "--register",
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, stderr.decode()
        summary = stdout.decode().splitlines()[-1]
        assert summary.startswith("rastro simulate: done:")
        assert "5 vehicles via http" in summary
        assert f"acknowledged {len(api.fixes)} " in summary
        assert len(api.devices) == 5
        assert len(api.fixes) >= 5

    async def test_command_interrupted_by_ctrl_c(self, api):
        """SIGINT stops the simulator cleanly, still with the summary line."""
        child = await _simulate_command(
            "--server", api.url, "--user", USER, "--password", PASSWORD,
            "--devices", "3", "--interval", "0.2",
        )  # fmt: skip
        await asyncio.wait_for(api.received.wait(), 30)
        child.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(child.communicate(), 30)
        assert child.returncode == 0, stderr.decode()
        assert "acknowledged" in stdout.decode()

    async def test_command_over_mqtt(self, broker_url, region, subscriber):
        """`rastro simulate --via mqtt` publishes protobuf fixes to the broker."""
        child = await _simulate_command(
            "--via", "mqtt", "--server", broker_url, "--region", region,
            "--format", "protobuf", "--devices", "4", "--duration", "1",
            "--interval", "0.25",
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, stderr.decode()
        summary = stdout.decode().splitlines()[-1]
        await asyncio.to_thread(subscriber.wait_for, 4)
        assert "4 vehicles via mqtt" in summary
        assert "rejected 0, errors 0, dropped 0" in summary
        assert FixMessage.FromString(subscriber.messages[0][1]).device.startswith(
            "sim-"
        )

    async def test_command_bad_center_exit_2(self):
        """A bad --center exits 2 with the reason on stderr."""
        child = await _simulate_command("--center", "somewhere", "--duration", "1")
        _, stderr = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 2
        assert "--center must be LAT,LON" in stderr.decode()

    async def test_command_unreachable_exit_1(self):
        """When nothing is ever acknowledged the command exits 1."""
        child = await _simulate_command(
            "--server", f"http://127.0.0.1:{free_port()}", "--token", TOKEN,
            "--devices", "2", "--duration", "1",
        )  # fmt: skip
        stdout, _ = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 1
        assert "acknowledged 0" in stdout.decode()


# MQTT -----------------------------------------------------------------------


@pytest.fixture
def broker_url(mqtt_url: str) -> str:
    """The session's mosquitto (tests/fixtures/services.py)."""
    return mqtt_url


@pytest.fixture
def region() -> str:
    """A topic region of this test alone, so the shared broker's traffic stays out."""
    return f"sim{uuid.uuid4().hex[:12]}"


class Subscriber:
    """A paho client subscribed to one region's topics, keeping every message."""

    def __init__(self, url: str, region: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port = parse_mqtt_url(url)
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        topic = f"gps/{region}/#"
        self._client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, message: self.messages.append(
            (message.topic, message.payload)
        )
        self._client.connect(host, port)
        self._client.loop_start()
        assert self._subscribed.wait(10)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def subscriber(broker_url: str, region: str) -> Iterator[Subscriber]:
    """Listens to the test's region until the test ends."""
    listener = Subscriber(broker_url, region)
    try:
        yield listener
    finally:
        listener.close()


@pytest.mark.integration
class TestRunSimulationMqtt:
    async def test_mqtt_every_fix_acknowledged(self, broker_url, region, subscriber):
        """Each fix is one QoS 1 message on gps/REGION/ID, each PUBACK counted."""
        report = await run_simulation(
            broker_url,
            via="mqtt",
            devices=20,
            region=region,
            interval_s=0.2,
            duration_s=1.0,
        )
        await asyncio.to_thread(subscriber.wait_for, report.sent)
        assert report.sent >= 20 * 4
        assert report.acknowledged == report.sent == len(subscriber.messages)
        assert report.errors == report.rejected == report.dropped == 0
        topic, payload = subscriber.messages[0]
        document = json.loads(payload)
        assert topic == f"gps/{region}/{document['uniqueId']}"
        fix_from_json(document, server_time_ms=0)

    async def test_mqtt_protobuf_payloads(self, broker_url, region, subscriber):
        """The protobuf format publishes one serialized Fix per message."""
        report = await run_simulation(
            broker_url,
            via="mqtt",
            devices=5,
            region=region,
            wire_format="protobuf",
            duration_s=0.3,
        )
        await asyncio.to_thread(subscriber.wait_for, report.sent)
        topic, payload = subscriber.messages[0]
        fix = FixMessage.FromString(payload)
        assert topic == f"gps/{region}/{fix.device}"
        assert fix.valid and fix.HasField("speed_kmh")
        assert report.acknowledged == report.sent == 5

    async def test_mqtt_small_window_still_delivers(
        self, broker_url, region, subscriber
    ):
        """A window of 4 in flight throttles publishing but loses nothing."""
        report = await run_simulation(
            broker_url,
            via="mqtt",
            devices=300,
            region=region,
            mqtt_window=4,
            duration_s=0.5,
        )
        await asyncio.to_thread(subscriber.wait_for, report.sent)
        assert report.acknowledged == report.sent == len(subscriber.messages) >= 300

    async def test_mqtt_rate_with_many_vehicles(self, broker_url, region):
        """5,000 vehicles at 1 Hz over mosquitto; prints the rate achieved."""
        report = await run_simulation(
            broker_url,
            via="mqtt",
            devices=5000,
            region=region,
            interval_s=1.0,
            duration_s=3.0,
        )
        print(f"\nsimulate mqtt: {report.summary()}")
        assert report.acknowledged == report.sent >= 10_000

    @pytest.mark.parametrize("region", ["a/b", "", "gps+", "#"])
    async def test_mqtt_bad_region_refused(self, region):
        """A region that is not one plain topic level is refused, naming it."""
        with pytest.raises(ValueError, match="region must be one topic level"):
            await run_simulation(
                "mqtt://127.0.0.1:1", via="mqtt", region=region, duration_s=0.1
            )

    async def test_mqtt_broker_up_late_still_delivers(
        self, region: str, tmp_path: Path
    ) -> None:
        """The broker comes up after the vehicles started (as after a restart):
        paho keeps the QoS 1 messages, reconnects, and every one is acknowledged."""
        port = free_port()
        broker = SystemMosquitto(port, tmp_path / "mosquitto")

        async def start_late() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(broker.start)

        starter = asyncio.create_task(start_late())
        try:
            report = await run_simulation(
                f"mqtt://127.0.0.1:{port}",
                via="mqtt",
                devices=5,
                region=region,
                interval_s=0.2,
                duration_s=1.0,
            )
            await starter
        finally:
            broker.stop()

        assert report.sent >= 5 * 4
        assert report.errors >= 1
        assert report.acknowledged == report.sent
        assert report.dropped == report.rejected == 0

    async def test_mqtt_broker_down_counted(self):
        """With no broker, refused connections are counted and nothing raises."""
        report = await run_simulation(
            f"mqtt://127.0.0.1:{free_port()}", via="mqtt", devices=3, duration_s=1.5
        )
        assert report.errors >= 1
        assert report.acknowledged == 0
        assert report.dropped == report.sent > 0
