"""The examples in docstrings run and hold, so that what they show stays true.

Every module of ``geo`` and ``pipeline`` whose source has an example (``>>>``) is
run with :mod:`doctest`; a module is found by its text, so a new example is tested
without being listed here.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("geo", "pipeline")


def _modules_with_examples() -> list[str]:
    """Dotted names of the modules whose source holds a ``>>>`` example."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>> " not in path.read_text(encoding="utf-8"):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


MODULES = _modules_with_examples()


def test_examples_are_found() -> None:
    """The search finds the modules known to carry examples."""
    assert {"geo.filtering", "geo.trips", "pipeline.stream.profiles"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(name)

    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )

    assert result.attempted > 0, f"{name} has '>>> ' but no example doctest runs"
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed"
