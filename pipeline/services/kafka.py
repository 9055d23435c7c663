"""A single-node Kafka broker Rastro runs itself, from the jars in :mod:`pipeline.jars`.

:class:`EmbeddedKafka` runs Kafka 4 in KRaft mode with one process acting as both
broker and controller (``process.roles=broker,controller``), as a ``java`` child
process: ``kafka.Kafka server.properties``, the class ``kafka-server-start.sh`` runs.
The controller quorum is static (``controller.quorum.voters``) rather than dynamic
(``--standalone``), so the controller port lives only in the configuration and may
differ from one start to the next without touching the metadata log.

The data folder holds:

- ``cluster-id``: the cluster id, made once; the storage is formatted with it once
  (``kafka.tools.StorageTool format``) and every later start reuses both;
- ``data/``: Kafka's log dirs (topic partitions and the KRaft metadata log);
- ``server.properties`` and ``log4j2.properties``: written at each start;
- ``logs/``: the broker's log (``server.log``, rolled at 10 MB) and the JVM's own
  standard output and error (``stdout.log``), quoted when the broker fails to start.

Everything is sized for one node: every internal topic has one replica and
``min.insync.replicas`` is 1, so ``acks=all`` means "written by this broker".  Topics
are never created on demand (``auto.create.topics.enable=false``): a mistyped topic
name is an error, not a new topic.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.jars import classpath
from pipeline.ports import ensure_port_free, free_port

log = structlog.get_logger("rastro.services.kafka")

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
FORMAT_TIMEOUT_S = 120.0
NODE_ID = 1
JAR_SET = "kafka-broker"
PROTOCOL_MAP = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"

_LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 5
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaServiceError(RuntimeError):
    """The embedded Kafka broker could not be formatted, started or stopped."""


def java_binary() -> Path:
    """``$JAVA_HOME/bin/java`` if set, else the ``java`` on ``PATH``."""
    home = os.environ.get("JAVA_HOME", "")
    if home and (Path(home) / "bin" / "java").exists():
        return Path(home) / "bin" / "java"
    found = shutil.which("java")
    if found is None:
        message = "no java found (set JAVA_HOME or install a JDK 17+)"
        raise KafkaServiceError(message)
    return Path(found)


def new_cluster_id() -> str:
    """A random Kafka cluster id: 16 bytes, URL-safe base64 without padding.

    Kafka's own ``Uuid.randomUuid`` never hands out an id whose text starts with
    ``-`` (it would read as a command-line flag); neither does this.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class EmbeddedKafka:
    """Kafka 4 in KRaft combined mode as a child JVM, data kept in ``data_dir``.

    ``port`` is the client (PLAINTEXT) listener; ``controller_port`` is the KRaft
    controller listener, picked free at first start when not given and kept for
    :meth:`restart`.  ``heap`` is the JVM's ``-Xmx``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        controller_port: int | None = None,
        *,
        heap: str = "512m",
        setting_name: str = "kafka_port",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.controller_port = controller_port
        self.heap = heap
        self.setting_name = setting_name
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``HOST:PORT`` for clients' ``bootstrap.servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker JVM's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def log_dir(self) -> Path:
        """Where the broker's log files go."""
        return self.data_dir / "logs"

    @property
    def cluster_id(self) -> str:
        """The cluster id kept in the data folder (made on first use).

        Storage formatted before the ``cluster-id`` file existed is trusted: its
        ``meta.properties`` names the id it was formatted with.
        """
        path = self.data_dir / "cluster-id"
        if path.exists():
            return path.read_text().strip()
        cluster = self._formatted_cluster_id() or new_cluster_id()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(cluster + "\n")
        return cluster

    def start(self) -> None:
        """Start the broker; block until it answers a metadata request.

        Formats the storage on the first start in this data folder.  Raises
        :class:`~pipeline.config.SettingError` naming ``setting_name`` when the port
        is taken and :class:`KafkaServiceError`, quoting the end of the broker's
        log, when it exits or does not answer within ``START_TIMEOUT_S``.
        """
        if self._process is not None and self._process.poll() is None:
            return
        ensure_port_free(self.setting_name, self.host, self.port)
        if self.controller_port is None:
            self.controller_port = free_port(self.host)
        began = time.monotonic()

        java, jars = java_binary(), classpath(JAR_SET)
        self._write_config()
        if not (self.data_dir / "data" / "meta.properties").exists():
            self._format(java, jars)
        self._launch(java, jars)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "kafka_ready",
            bootstrap=self.bootstrap_servers,
            controller_port=self.controller_port,
            seconds=round(time.monotonic() - began, 2),
        )

    def stop(self) -> None:
        """Stop the broker: SIGTERM (a clean shutdown), then SIGKILL after 30 s."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("kafka_killed", port=self.port)
                process.kill()
                process.wait()
            log.info("kafka_stopped", port=self.port)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    def restart(self) -> None:
        """Stop, then start again on the same ports and data."""
        self.stop()
        self.start()

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

    def _server_properties(self) -> dict[str, str]:
        client = f"{self.host}:{self.port}"
        controller = f"{self.host}:{self.controller_port}"
        return {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{controller}",
            "listeners": f"PLAINTEXT://{client},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{client}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": PROTOCOL_MAP,
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }

    def _formatted_cluster_id(self) -> str | None:
        meta = self.data_dir / "data" / "meta.properties"
        with contextlib.suppress(OSError):
            for line in meta.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "cluster.id":
                    return value.strip()
        return None

    def _write_config(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self._server_properties().items()]
        (self.data_dir / "server.properties").write_text("\n".join(lines) + "\n")
        log4j = _LOG4J2.format(logs=self.log_dir)
        (self.data_dir / "log4j2.properties").write_text(log4j)

    def _jvm(self, java: Path, jars: str) -> list[str]:
        return [
            str(java),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            jars,
        ]

    def _format(self, java: Path, jars: str) -> None:
        command = [
            *self._jvm(java, jars),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.cluster_id,
            "--config",
            str(self.data_dir / "server.properties"),
        ]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=FORMAT_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            message = f"kafka storage format failed in {self.data_dir}:\n{output}"
            raise KafkaServiceError(message)
        log.info("kafka_formatted", data_dir=str(self.data_dir))

    def _launch(self, java: Path, jars: str) -> None:
        command = [
            *self._jvm(java, jars),
            "kafka.Kafka",
            str(self.data_dir / "server.properties"),
        ]
        self._stdout = (self.log_dir / "stdout.log").open("ab")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                message = (
                    f"kafka broker exited with code {self._process.returncode}; "
                    f"end of its logs in {self.log_dir}:\n{self._log_tail()}"
                )
                raise KafkaServiceError(message)
            if self._answers_metadata():
                return
            time.sleep(0.2)
        message = (
            f"kafka broker not ready after {START_TIMEOUT_S} s on "
            f"{self.bootstrap_servers}; end of its logs in {self.log_dir}:\n"
            f"{self._log_tail()}"
        )
        raise KafkaServiceError(message)

    def _answers_metadata(self) -> bool:
        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "socket.connection.setup.timeout.ms": 1000,
                "log_level": 0,
            }
        )
        try:
            metadata = admin.list_topics(timeout=1.0)
        except KafkaException:
            return False
        return NODE_ID in metadata.brokers

    def _log_tail(self, lines: int = 30) -> str:
        tails = []
        for name in ("server.log", "stdout.log"):
            with contextlib.suppress(OSError):
                text = (self.log_dir / name).read_text(errors="replace")
                tail = "\n".join(text.splitlines()[-lines:])
                if tail:
                    tails.append(f"--- {name}\n{tail}")
        return "\n".join(tails) or "(no broker log)"
