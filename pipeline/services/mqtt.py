"""MQTT brokers Rastro starts itself: embedded (amqtt) or Debian's Mosquitto.

:class:`EmbeddedMqttBroker` runs amqtt's broker in a child Python process
(``python -m pipeline.services.mqtt``).  A child process, rather than a thread in
Rastro's own event loop, keeps the broker's work off the API's loop and GIL, lets a
broker crash leave the rest standing, and makes stopping it certain.  amqtt speaks
**MQTT 3.1.1 only**: no MQTT 5, no ``$share/...`` shared subscriptions, so
``supports_shared_subscriptions`` is False and the ingest bridge must run a single
subscriber.

:class:`SystemMosquitto` runs Debian's ``mosquitto`` with a generated configuration:
MQTT 5 and shared subscriptions work, anonymous clients are allowed (for now), and
``max_queued_messages`` is raised so a slow subscriber does not silently lose
messages (Mosquitto's default queue is 1,000 messages per client).

Both offer ``start()`` (blocks until the port accepts connections), ``stop()``, use as
a context manager, ``url`` (``mqtt://HOST:PORT``) and
``supports_shared_subscriptions``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import structlog

from pipeline.ports import ensure_port_free

log = structlog.get_logger("rastro.services.mqtt")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MAX_QUEUED_MESSAGES = 200_000


class MqttServiceError(RuntimeError):
    """An MQTT broker Rastro manages could not be started."""


class _BrokerProcess:
    """A broker run as a child process, listening on ``host:port``."""

    supports_shared_subscriptions = False
    name = "mqtt"

    def __init__(
        self, port: int, host: str, *, setting_name: str, log_file: Path | None
    ) -> None:
        self.port = port
        self.host = host
        self.setting_name = setting_name
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the broker and block until its port accepts connections.

        Raises :class:`~pipeline.config.SettingError` naming ``setting_name`` when the
        port is taken, :class:`MqttServiceError` when the broker does not come up.
        """
        ensure_port_free(self.setting_name, self.host, self.port)
        command = self._command()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        self._log_started()

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a grace period)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("mqtt_broker_killed", port=self.port)
                process.kill()
                process.wait()
            log.info("mqtt_broker_stopped", port=self.port)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _log_started(self) -> None:
        raise NotImplementedError

    def _wait_until_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                message = (
                    f"{self.name} broker exited with code {self._process.returncode}"
                    + self._log_hint()
                )
                raise MqttServiceError(message)
            if connack_received(self.host, self.port):
                return
            time.sleep(0.05)
        message = f"{self.name} broker not listening on port {self.port} "
        raise MqttServiceError(message + f"after {START_TIMEOUT_S} s")

    def _log_hint(self) -> str:
        if self.log_file is None:
            return " (its output went to standard error)"
        with contextlib.suppress(OSError):
            lines = self.log_file.read_text(errors="replace").splitlines()[-20:]
            return f"; end of {self.log_file}:\n" + "\n".join(lines)
        return ""


def connack_received(host: str, port: int, *, timeout_s: float = 1.0) -> bool:
    """Whether an MQTT 3.1.1 CONNECT to ``host:port`` is answered with CONNACK 0.

    A bare TCP connect is not enough: amqtt accepts before it is ready, and logs an
    error for a client that sends nothing.
    """
    client_id = b"rastro-readiness-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # 3.1.1, clean session, keep-alive 10 s
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    connect = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as probe:
            probe.sendall(connect)
            answer = probe.recv(4)
            probe.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return answer == b"\x20\x02\x00\x00"


class EmbeddedMqttBroker(_BrokerProcess):
    """amqtt's broker in a child process; **MQTT 3.1.1 only**, no shared subscriptions.

    No persistence: amqtt keeps sessions in memory.  ``log_file`` receives the
    broker's output; when None it goes to this process's standard error.
    """

    supports_shared_subscriptions = False
    name = "amqtt"

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        setting_name: str = "mqtt_port",
        log_file: Path | None = None,
    ) -> None:
        super().__init__(port, host, setting_name=setting_name, log_file=log_file)

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pipeline.services.mqtt",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--parent-pid",
            str(os.getpid()),
        ]

    def _log_started(self) -> None:
        log.info(
            "mqtt_broker_ready",
            broker="amqtt",
            protocol="MQTT 3.1.1 only",
            shared_subscriptions=False,
            host=self.host,
            port=self.port,
        )


class SystemMosquitto(_BrokerProcess):
    """Debian's Mosquitto with a generated config in ``data_dir``: MQTT 5, ``$share``.

    The listener binds ``host:port`` only; anonymous clients are allowed; nothing is
    persisted.  The broker's log is ``data_dir/mosquitto.log``.
    """

    supports_shared_subscriptions = True
    name = "mosquitto"

    def __init__(
        self,
        port: int,
        data_dir: Path,
        host: str = "127.0.0.1",
        *,
        setting_name: str = "mqtt_port",
        binary: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = binary or Path(shutil.which("mosquitto") or "/usr/sbin/mosquitto")
        super().__init__(
            port,
            host,
            setting_name=setting_name,
            log_file=self.data_dir / "mosquitto.log",
        )

    @property
    def config_file(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self.data_dir / "mosquitto.conf"

    def _command(self) -> list[str]:
        if not os.access(self.binary, os.X_OK):
            message = f"mosquitto not found or not executable: {self.binary}"
            raise MqttServiceError(message)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        return [str(self.binary), "-c", str(self.config_file)]

    def _config(self) -> str:
        lines = [
            "# Written by Rastro at every start; edits are overwritten.",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            # A slow subscriber otherwise loses QoS 1 messages past 1,000 queued.
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
        ]
        return "\n".join(lines) + "\n"

    def _log_started(self) -> None:
        log.info(
            "mqtt_broker_ready",
            broker="mosquitto",
            protocol="MQTT 3.1.1 and 5",
            shared_subscriptions=True,
            host=self.host,
            port=self.port,
        )


# -- the child process behind EmbeddedMqttBroker ---------------------------------------


def amqtt_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, anonymous clients, no packet log."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": True
            },
        },
    }


async def run_amqtt(host: str, port: int, parent_pid: int | None) -> None:
    """Run amqtt's broker until SIGTERM/SIGINT, or until the parent process is gone."""
    from amqtt.broker import Broker

    broker = Broker(amqtt_config(host, port))
    await broker.start()
    log.info("amqtt_broker_started", protocol="MQTT 3.1.1 only", host=host, port=port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    while not stopping.is_set():
        # An orphaned broker would hold the port forever: leave with the parent.
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("amqtt_broker_orphaned", parent_pid=parent_pid)
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=1.0)

    await broker.shutdown()
    log.info("amqtt_broker_shut_down", port=port)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.services.mqtt``."""
    from pipeline.logs import configure_logging

    parser = argparse.ArgumentParser(description="Run amqtt's MQTT 3.1.1 broker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    arguments = parser.parse_args(argv)

    configure_logging()
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(run_amqtt(arguments.host, arguments.port, arguments.parent_pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
