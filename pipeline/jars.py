"""Pinned Java jars, fetched from a Maven repository and checked against a lock file.

Rastro runs two kinds of JVM code it does not ship: the Kafka broker (for the
no-setup default) and the Flink connectors the streaming job loads.  Both come from
Maven Central as plain jars.  :func:`ensure_jars` downloads whichever of a named jar
set is missing from the local cache, verifies every file's SHA-256 against
``jars.lock.json`` (committed next to this module) and returns the local paths in lock
order, ready for a ``-cp`` or Flink's ``pipeline.jars``.

Settings (environment):

``RASTRO_JAR_CACHE``
    Cache folder; default ``~/.cache/rastro/jars``.  Files are laid out as in a Maven
    repository (``group/path/artifact/version/artifact-version.jar``).
``RASTRO_MAVEN_REPOSITORY``
    Repository base URL; default ``https://repo1.maven.org/maven2``.

How the lock was produced (once, by hand, when a pin changes):

1. Write a throwaway ``pom.xml`` in ``/tmp`` whose ``<dependencies>`` are the roots of a
   set: for ``kafka-broker`` ``org.apache.kafka:kafka_2.13:4.1.2`` plus
   ``org.apache.logging.log4j:log4j-slf4j-impl`` at the log4j version Kafka depends on
   (the binary distribution ships that SLF4J binding in ``libs/``; the POM does not
   name it, and without it the broker writes no log); for ``flink-connectors`` the
   connector, JDBC, PostgreSQL driver and protobuf-format artifacts listed in the lock.
2. ``mvn dependency:list -DincludeScope=runtime -DoutputAbsoluteArtifactFilename=true
   -DoutputFile=list.txt`` lists the runtime tree (compile + runtime scope; test and
   provided scope excluded) with each jar's path in ``~/.m2``.
3. For each line record ``group:artifact:version``, the file's SHA-256 and its size.

For ``flink-connectors`` three transitive jars were left out on purpose:
``flink-connector-base`` (already inside ``flink-dist`` of the PyFlink wheel; a
second copy of another version would clash), and the annotation-only
``checker-qual`` (from the PostgreSQL driver) and ``jsr305`` (from flink-protobuf),
which nothing loads at run time.  Everything else the connectors declare is
``provided`` and present in the wheel's ``lib/`` (the table bridge in
``flink-table-api-java-uber``, janino in ``flink-table-runtime``).
``flink-connector-jdbc-*`` is ``4.0.0-2.0``, built for Flink 2.0: Maven Central has
no 4.1.0-2.2.  ``flink-sql-connector-kafka`` is a shaded jar with kafka-clients
inside.  ``protobuf-java`` is the version ``flink-protobuf`` 2.2.0 declares.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import structlog

log = structlog.get_logger("rastro.jars")

LOCK_FILE = Path(__file__).with_name("jars.lock.json")
DEFAULT_REPOSITORY = "https://repo1.maven.org/maven2"
DEFAULT_CACHE = Path("~/.cache/rastro/jars")
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20


class JarError(RuntimeError):
    """A pinned jar could not be fetched, or its content is not what the lock says."""


class ChecksumMismatch(JarError):
    """A jar's SHA-256 differs from the lock file's (the bad file has been deleted)."""


@dataclass(frozen=True, slots=True)
class PinnedJar:
    """One jar of the lock: Maven coordinate, expected SHA-256 and size in bytes."""

    group: str
    artifact: str
    version: str
    sha256: str
    size: int

    @property
    def coordinate(self) -> str:
        """``group:artifact:version``."""
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def relative_path(self) -> str:
        """The jar's path inside a Maven repository (and inside the cache)."""
        folder = self.group.replace(".", "/")
        name = f"{self.artifact}-{self.version}.jar"
        return f"{folder}/{self.artifact}/{self.version}/{name}"


def cache_dir() -> Path:
    """The jar cache folder (``RASTRO_JAR_CACHE`` or ``~/.cache/rastro/jars``)."""
    configured = os.environ.get("RASTRO_JAR_CACHE", "")
    return Path(configured or DEFAULT_CACHE).expanduser()


def repository_url() -> str:
    """The Maven repository base URL, without a trailing slash."""
    configured = os.environ.get("RASTRO_MAVEN_REPOSITORY", "")
    return (configured or DEFAULT_REPOSITORY).rstrip("/")


def groups() -> list[str]:
    """Names of the jar sets in the lock file."""
    return list(_lock())


def pinned(group: str) -> list[PinnedJar]:
    """The jars of ``group`` in lock order; :class:`ValueError` for an unknown name."""
    lock = _lock()
    if group not in lock:
        message = f"unknown jar set {group!r}; the lock has {sorted(lock)}"
        raise ValueError(message)
    return list(lock[group])


def ensure_jars(group: str, *, cache: Path | None = None) -> list[Path]:
    """Local paths of every jar of ``group``, downloading and verifying missing ones.

    A cached file is re-hashed on every call (about 0.1 s for the broker's 44 MB), so
    a file damaged in the cache is noticed, deleted and fetched again.  Raises
    :class:`ChecksumMismatch` when a freshly downloaded file is wrong and
    :class:`JarError` when the repository cannot be reached.
    """
    root = (cache or cache_dir()).expanduser()
    jars = pinned(group)
    paths = [_ensure_one(jar, root) for jar in jars]
    log.debug("jars_ready", group=group, jars=len(paths), cache=str(root))
    return paths


def classpath(group: str, *, cache: Path | None = None) -> str:
    """``ensure_jars(group)`` joined with the platform's path separator."""
    return os.pathsep.join(str(path) for path in ensure_jars(group, cache=cache))


def verify(jar: PinnedJar, path: Path) -> None:
    """Raise :class:`ChecksumMismatch` (and delete ``path``) if it is not ``jar``."""
    digest = _sha256(path)
    if digest == jar.sha256:
        return
    path.unlink(missing_ok=True)
    message = (
        f"checksum mismatch for {jar.coordinate}: {path.name} has SHA-256 {digest}, "
        f"the lock expects {jar.sha256}; the file was deleted"
    )
    raise ChecksumMismatch(message)


def _ensure_one(jar: PinnedJar, root: Path) -> Path:
    path = root / jar.relative_path
    if path.exists():
        try:
            verify(jar, path)
            return path
        except ChecksumMismatch:
            log.warning("jar_cache_corrupt", jar=jar.coordinate, path=str(path))

    _download(jar, path)
    return path


def _download(jar: PinnedJar, path: Path) -> None:
    url = f"{repository_url()}/{jar.relative_path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    os.close(handle)
    partial = Path(name)
    log.info("jar_download", jar=jar.coordinate, url=url, bytes=jar.size)

    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            partial.open("wb") as out,
        ):
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        message = f"could not download {jar.coordinate} from {url}: {error}"
        raise JarError(message) from error

    # Checked, then renamed: a crash or a bad download never leaves a file under
    # the real name, and concurrent downloads of one jar each rename a whole file.
    verify(jar, partial)
    partial.replace(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@cache
def _lock() -> dict[str, tuple[PinnedJar, ...]]:
    document = json.loads(LOCK_FILE.read_text())
    return {
        name: tuple(_pinned_jar(entry) for entry in entries)
        for name, entries in document["groups"].items()
    }


def _pinned_jar(entry: dict[str, object]) -> PinnedJar:
    group, artifact, version = str(entry["coordinate"]).split(":")
    size = int(str(entry["size"]))
    return PinnedJar(group, artifact, version, str(entry["sha256"]), size)
