"""PostgreSQL servers Rastro starts itself: embedded (PyPI) or Debian's, over TCP.

:class:`EmbeddedPostgres` runs the PostgreSQL 16 binaries that the ``pgserver`` wheel
carries; :class:`SystemPostgres` runs Debian's PostgreSQL 15 from
``/usr/lib/postgresql/15/bin`` (what integration tests and CI use for full mode).
Both drive ``initdb`` and ``pg_ctl`` directly rather than through pgserver's Python
API, because that API listens on a Unix socket only and Rastro's tiers (the PyFlink
job's JDBC sink among them) need TCP.

The data folder holds:

- ``pgdata/``: the cluster, created by ``initdb`` on first start and kept across
  restarts;
- ``password``: the generated password of the ``rastro`` role (mode 0600).

The superuser ``postgres`` has no password and is reachable only through a Unix
socket in a private folder (mode 0700) made for each start; TCP clients log in as
``rastro`` with SCRAM-SHA-256.  The password never reaches a log line, and the
server is handed only its SCRAM verifier, so it cannot appear in a server log either.

PostgreSQL refuses to run as root.  When Rastro runs as root (as CI does) the server
runs as an unprivileged OS user (``pgserver`` for the embedded server, created when
missing, as pgserver itself does; ``postgres`` for Debian's) through ``runuser``.
That user owns ``pgdata/``, and folders above it that it could not enter get the
"others may traverse" bit (o+x, never read): logged as
``postgres_folder_made_traversable``.  A server left running by a crashed Rastro is
stopped and restarted on the new port; one whose owner still runs is left alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import asyncpg
import structlog

from pipeline.ports import ensure_port_free

log = structlog.get_logger("rastro.services.postgres")

DATABASE = "rastro"
ROLE = "rastro"
SUPERUSER = "postgres"
DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_S = 60

_T = TypeVar("_T")


class PostgresServiceError(RuntimeError):
    """A PostgreSQL server Rastro manages could not be set up, started or stopped."""


def pgserver_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL build inside the ``pgserver`` wheel.

    Found without importing ``pgserver``: importing it creates lock files and
    registers exit handlers that Rastro does not want.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        message = "the pgserver package is not installed; pip install pgserver"
        raise PostgresServiceError(message)
    return Path(spec.origin).parent / "pginstall" / "bin"


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802).

    Sending the verifier instead of the password keeps the password itself out of
    the server: ``ALTER ROLE ... PASSWORD`` accepts a verifier as it is.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def run_coroutine(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run an asyncio coroutine to completion from synchronous code.

    It runs on a fresh event loop in a short-lived thread, so it works whether or not
    the caller is itself inside a running loop (a pytest fixture, the supervisor).
    """
    outcome: dict[str, _T] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        outcome["value"] = await factory()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=target, name="rastro-postgres-admin")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome["value"]


class _PostgresCluster:
    """One PostgreSQL cluster in a data folder, listening on ``host:port``.

    Subclasses choose the binaries and the OS user the server runs as under root.
    """

    service = "postgres"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        bin_dir: Path,
        root_os_user: str,
        setting_name: str = "postgres_port",
        durable: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.setting_name = setting_name
        self.durable = durable
        self._bin_dir = bin_dir
        self._os_user = root_os_user if os.geteuid() == 0 else None
        self._socket_dir: Path | None = None

    # -- what clients use ------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        """The cluster folder ``initdb`` creates."""
        return self.data_dir / "pgdata"

    @property
    def password_file(self) -> Path:
        """Where the ``rastro`` role's password is kept (mode 0600)."""
        return self.data_dir / "password"

    @property
    def owner_file(self) -> Path:
        """Process id of the program that started the server last."""
        return self.data_dir / "owner.pid"

    @property
    def dsn(self) -> str:
        """``postgresql://rastro:PASSWORD@HOST:PORT/rastro``; keep it out of logs."""
        return self.dsn_for(DATABASE)

    def dsn_for(self, database: str) -> str:
        """The DSN of another database on this server, as the ``rastro`` role."""
        password = self._read_password()
        path = urllib.parse.quote(database, safe="")
        return f"postgresql://{ROLE}:{password}@{self.host}:{self.port}/{path}"

    @property
    def running(self) -> bool:
        """Whether a server is running on this data folder (``pg_ctl status``)."""
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        status = self._pg_ctl(["status"], check=False)
        return status.returncode == 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Initialise on first start, start the server, block until it accepts logins.

        Raises :class:`~pipeline.config.SettingError` naming ``setting_name`` when the
        port is taken, and :class:`PostgresServiceError` (with the end of the server
        log) when the server does not come up.
        """
        ensure_port_free(self.setting_name, self.host, self.port)
        self._check_binaries()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        first_start = not (self.pgdata / "PG_VERSION").exists()
        if first_start:
            self._initdb()
        elif self.running:
            self._stop_leftover()

        self._socket_dir = self._make_socket_dir()
        try:
            self._start_server()
            self.owner_file.write_text(f"{os.getpid()}\n")
            run_coroutine(self._ensure_role_and_database)
            run_coroutine(self._check_login)
        except BaseException:
            self.stop()
            raise
        log.info(
            "postgres_ready",
            host=self.host,
            port=self.port,
            data_dir=str(self.data_dir),
            initialised=first_start,
            os_user=self._os_user or "",
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended) if it runs."""
        if self.running:
            self._pg_ctl(["-m", "fast", "-w", "-t", str(START_TIMEOUT_S), "stop"])
            log.info("postgres_stopped", port=self.port)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

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

    # -- administration (superuser over the private socket) --------------------------

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` owned by ``rastro`` and return its DSN.

        ``template`` copies an existing database (fast: a file copy), which is how
        the test fixtures hand each test an already-migrated database.
        """
        statement = "CREATE DATABASE {name} OWNER {role}"
        if template is not None:
            statement += " TEMPLATE {template}"

        async def create(connection: asyncpg.Connection) -> None:
            sql = await _format_identifiers(
                connection, statement, name=name, role=ROLE, template=template or ""
            )
            await connection.execute(sql)

        run_coroutine(lambda: self._as_superuser(create))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, ending its sessions first."""

        async def drop(connection: asyncpg.Connection) -> None:
            sql = await _format_identifiers(
                connection, "DROP DATABASE IF EXISTS {name} WITH (FORCE)", name=name
            )
            await connection.execute(sql)

        run_coroutine(lambda: self._as_superuser(drop))

    def server_pids(self) -> list[int]:
        """The postmaster's process id and its children's (to measure memory)."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return []
        postmaster = int(pid_file.read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True
        ).stdout.split()
        return [postmaster, *map(int, children)]

    # -- steps -----------------------------------------------------------------------

    def _stop_leftover(self) -> None:
        """Stop a server still running on this folder, unless its owner is alive.

        pg_ctl detaches the server, so one outlives a Rastro that crashed; it is
        stopped and started anew on this port.  A server that another live program
        started is left alone: two instances must not share one data folder.
        """
        owner = _read_pid(self.owner_file)
        if owner is not None and owner != os.getpid() and _pid_alive(owner):
            message = (
                f"a PostgreSQL server on {self.data_dir} was started by process "
                f"{owner}, which still runs; stop it or choose another data folder"
            )
            raise PostgresServiceError(message)
        log.warning("postgres_leftover_server_stopped", data_dir=str(self.data_dir))
        self._pg_ctl(["-m", "fast", "-w", "stop"])

    def _check_binaries(self) -> None:
        postgres = self._bin_dir / "postgres"
        if not os.access(postgres, os.X_OK):
            message = (
                f"PostgreSQL server binary not found or not executable: {postgres}"
            )
            raise PostgresServiceError(message)
        if self._os_user is not None and not postgres.stat().st_mode & stat.S_IXOTH:
            message = f"{postgres} is not executable by the {self._os_user} OS user"
            raise PostgresServiceError(message)

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._hand_over(self.pgdata)
        arguments = [
            str(self._bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.durable:
            arguments.append("--no-sync")
        self._run(arguments, what="initdb")
        log.info("postgres_initialised", data_dir=str(self.data_dir))

    def _start_server(self) -> None:
        assert self._socket_dir is not None
        options = f"-h {self.host} -p {self.port} -k {self._socket_dir}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        arguments = ["-w", "-t", str(START_TIMEOUT_S), "-l", str(self._log_file)]
        try:
            self._pg_ctl([*arguments, "-o", options, "start"])
        except PostgresServiceError as error:
            message = f"{error}\nend of {self._log_file}:\n{self._log_tail()}"
            raise PostgresServiceError(message) from error

    async def _ensure_role_and_database(self) -> None:
        password = self._read_password(create=True)

        async def setup(connection: asyncpg.Connection) -> None:
            # The verifier, not the password, goes to the server (see scram_verifier).
            await connection.execute("SET log_statement = 'none'")
            exists = await connection.fetchval(
                "SELECT count(*) > 0 FROM pg_roles WHERE rolname = $1", ROLE
            )
            verb = "ALTER" if exists else "CREATE"
            sql = await connection.fetchval(
                "SELECT format('%s ROLE %I LOGIN CREATEDB PASSWORD %L', $1::text, "
                "$2::text, $3::text)",
                verb,
                ROLE,
                scram_verifier(password),
            )
            await connection.execute(sql)
            has_database = await connection.fetchval(
                "SELECT count(*) > 0 FROM pg_database WHERE datname = $1", DATABASE
            )
            if not has_database:
                create = await _format_identifiers(
                    connection,
                    "CREATE DATABASE {name} OWNER {role}",
                    name=DATABASE,
                    role=ROLE,
                )
                await connection.execute(create)

        await self._as_superuser(setup)

    async def _check_login(self) -> None:
        connection = await asyncpg.connect(self.dsn, timeout=10)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    async def _as_superuser(
        self, work: Callable[[asyncpg.Connection], Awaitable[None]]
    ) -> None:
        if self._socket_dir is None:
            message = "the PostgreSQL server is not started; call start() first"
            raise PostgresServiceError(message)
        connection = await asyncpg.connect(
            host=str(self._socket_dir),
            port=self.port,
            user=SUPERUSER,
            database="postgres",
            timeout=10,
        )
        try:
            await work(connection)
        finally:
            await connection.close()

    # -- files, users and commands ---------------------------------------------------

    @property
    def _log_file(self) -> Path:
        return self.pgdata / "server.log"

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self._log_file.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no server log)"

    def _read_password(self, *, create: bool = False) -> str:
        if not self.password_file.exists():
            if not create:
                message = f"no password yet in {self.password_file}; call start() first"
                raise PostgresServiceError(message)
            descriptor = os.open(
                self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
            log.info("postgres_password_created", path=str(self.password_file))
        self.password_file.chmod(0o600)
        return self.password_file.read_text().strip()

    def _make_socket_dir(self) -> Path:
        # Unix socket paths are limited to 107 bytes: keep it short, under /tmp.
        socket_dir = Path(tempfile.mkdtemp(prefix="rastro-pg-"))
        socket_dir.chmod(0o700)
        self._hand_over(socket_dir)
        return socket_dir

    def _hand_over(self, folder: Path) -> None:
        """Give ``folder`` to the server's OS user and let it reach the folder."""
        if self._os_user is None:
            return
        user = _ensure_os_user(self._os_user)
        os.chown(folder, user.pw_uid, user.pw_gid)
        for parent in folder.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                # Traverse only (o+x): the folder's listing stays private.
                parent.chmod(mode | stat.S_IXOTH)
                log.info("postgres_folder_made_traversable", path=str(parent))

    def _pg_ctl(
        self, arguments: list[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self._bin_dir / "pg_ctl"), "-D", str(self.pgdata), *arguments]
        return self._run(command, what="pg_ctl " + arguments[-1], check=check)

    def _run(
        self, command: list[str], *, what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if self._os_user is not None:
            command = ["runuser", "-u", self._os_user, "--", *command]
        # pg_ctl start leaves the server holding inherited pipes: use files instead,
        # or reading its output would wait for the server to exit.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                cwd="/",
                check=False,
            )
            output.seek(0)
            text = output.read()
        if check and result.returncode != 0:
            message = (
                f"{what} failed with exit code {result.returncode}: {text.strip()}"
            )
            raise PostgresServiceError(message)
        return subprocess.CompletedProcess(command, result.returncode, text, "")


async def _format_identifiers(
    connection: asyncpg.Connection, statement: str, **identifiers: str
) -> str:
    """Fill ``{name}`` slots of a DDL statement with identifiers quoted by the server.

    DDL takes no bind parameters; ``quote_ident`` does the quoting instead.
    """
    quoted = {}
    for key, value in identifiers.items():
        quoted[key] = await connection.fetchval("SELECT quote_ident($1)", value)
    return statement.format(**quoted)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    """The OS user ``name``, created (no login shell, no home) when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    log.info("postgres_os_user_created", user=name)
    return pwd.getpwnam(name)


class EmbeddedPostgres(_PostgresCluster):
    """PostgreSQL 16 from the ``pgserver`` wheel, on TCP, data kept in ``data_dir``.

    The no-setup default: nothing to install but Rastro's Python packages.  First
    start runs ``initdb`` (a few seconds); later starts reuse the cluster.
    Extensions: only ``plpgsql`` (and ``vector``); no TimescaleDB, so fixes use native
    partitions.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        setting_name: str = "postgres_port",
        durable: bool = True,
    ) -> None:
        super().__init__(
            data_dir,
            port,
            host,
            bin_dir=pgserver_bin_dir(),
            root_os_user="pgserver",
            setting_name=setting_name,
            durable=durable,
        )


class SystemPostgres(_PostgresCluster):
    """Debian's PostgreSQL 15 (``/usr/lib/postgresql/15/bin``), run from ``data_dir``.

    Used by integration tests and CI for full mode.  As root the server runs as the
    ``postgres`` OS user the Debian package creates.  ``durable=False`` turns fsync
    off, which test fixtures use to go faster.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        setting_name: str = "postgres_port",
        durable: bool = True,
        bin_dir: Path = DEBIAN_BIN,
    ) -> None:
        super().__init__(
            data_dir,
            port,
            host,
            bin_dir=bin_dir,
            root_os_user="postgres",
            setting_name=setting_name,
            durable=durable,
        )
