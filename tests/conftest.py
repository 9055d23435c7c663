"""Shared pytest setup. Service fixtures live in tests/fixtures/, one per area."""

pytest_plugins: list[str] = []
