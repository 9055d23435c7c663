"""Pinned jars: fetched into the cache, verified against the lock, never trusted blind.

The repository in these tests is a ``file://`` folder built from the real cache, so
they exercise the same urllib download path without the network: only
``kafka_jars`` fetches from Maven Central, and only when the user cache is empty.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from pipeline.jars import (
    ChecksumMismatch,
    JarError,
    PinnedJar,
    classpath,
    ensure_jars,
    groups,
    pinned,
)

GROUP = "kafka-broker"


@pytest.fixture(scope="module")
def kafka_jars() -> list[Path]:
    """The broker's jars in the user cache (downloaded once if missing)."""
    return ensure_jars(GROUP)


@pytest.fixture
def local_repository(tmp_path: Path, kafka_jars: list[Path]) -> Path:
    """A Maven-layout folder holding copies of the broker's jars."""
    repository = tmp_path / "repository"
    for jar, path in zip(pinned(GROUP), kafka_jars, strict=True):
        target = repository / jar.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return repository


@pytest.fixture
def use_repository(monkeypatch: pytest.MonkeyPatch, local_repository: Path) -> Path:
    """Point RASTRO_MAVEN_REPOSITORY at the local folder."""
    monkeypatch.setenv("RASTRO_MAVEN_REPOSITORY", local_repository.as_uri())
    return local_repository


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _smallest(group: str) -> PinnedJar:
    return min(pinned(group), key=lambda jar: jar.size)


class TestLock:
    def test_lock_has_both_jar_sets(self) -> None:
        assert set(groups()) == {"kafka-broker", "flink-connectors"}

    def test_lock_broker_set_starts_with_kafka(self) -> None:
        first = pinned(GROUP)[0]

        assert first.coordinate.startswith("org.apache.kafka:kafka_2.13:4.")

    def test_lock_connector_set_names_every_connector(self) -> None:
        artifacts = {jar.artifact for jar in pinned("flink-connectors")}

        assert {
            "flink-sql-connector-kafka",
            "flink-connector-jdbc-core",
            "flink-connector-jdbc-postgres",
            "postgresql",
            "flink-protobuf",
            "protobuf-java",
        } <= artifacts

    def test_pinned_unknown_group_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"unknown jar set 'kafka-brokers'"):
            pinned("kafka-brokers")


class TestEnsureJars:
    def test_ensure_jars_returns_verified_paths_in_lock_order(
        self, kafka_jars: list[Path]
    ) -> None:
        jars = pinned(GROUP)

        assert [path.name for path in kafka_jars] == [
            f"{jar.artifact}-{jar.version}.jar" for jar in jars
        ]
        assert all(
            _sha256(path) == jar.sha256
            for path, jar in zip(kafka_jars, jars, strict=True)
        )

    def test_ensure_jars_fills_empty_cache_from_repository(
        self, tmp_path: Path, use_repository: Path
    ) -> None:
        cache = tmp_path / "cache"

        paths = ensure_jars(GROUP, cache=cache)

        assert all(path.is_relative_to(cache) and path.is_file() for path in paths)
        assert not list(cache.rglob("*.part"))

    def test_ensure_jars_refetches_corrupted_cached_file(
        self, tmp_path: Path, use_repository: Path
    ) -> None:
        cache = tmp_path / "cache"
        ensure_jars(GROUP, cache=cache)
        victim = _smallest(GROUP)
        (cache / victim.relative_path).write_bytes(b"not a jar at all")

        paths = ensure_jars(GROUP, cache=cache)

        repaired = cache / victim.relative_path
        assert repaired in paths
        assert _sha256(repaired) == victim.sha256

    def test_ensure_jars_rejects_corrupted_download(
        self, tmp_path: Path, use_repository: Path
    ) -> None:
        cache = tmp_path / "cache"
        victim = _smallest(GROUP)
        (use_repository / victim.relative_path).write_bytes(b"garbage from a mirror")

        with pytest.raises(ChecksumMismatch, match=victim.coordinate):
            ensure_jars(GROUP, cache=cache)

        folder = (cache / victim.relative_path).parent
        assert list(folder.iterdir()) == []

    def test_ensure_jars_unreachable_repository_raises(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RASTRO_MAVEN_REPOSITORY", (tmp_path / "none").as_uri())

        with pytest.raises(JarError, match=r"could not download org\.apache\.kafka"):
            ensure_jars(GROUP, cache=tmp_path / "cache")

    def test_ensure_jars_cache_setting_from_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_repository: Path
    ) -> None:
        monkeypatch.setenv("RASTRO_JAR_CACHE", str(tmp_path / "env-cache"))

        paths = ensure_jars(GROUP)

        assert all(path.is_relative_to(tmp_path / "env-cache") for path in paths)


class TestClasspath:
    def test_classpath_joins_paths_with_separator(self, kafka_jars: list[Path]) -> None:
        joined = classpath(GROUP)

        assert joined.split(os.pathsep) == [str(path) for path in kafka_jars]
