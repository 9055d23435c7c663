"""Shared pytest setup. Service fixtures live in tests/fixtures/, one per area."""

pytest_plugins: list[str] = [
    "tests.fixtures.services",
    "tests.fixtures.dashboard",
    "tests.fixtures.kafka",
    "tests.fixtures.ingest",
    "tests.fixtures.trackers",
    "tests.fixtures.api",
    "tests.fixtures.flink",
]
