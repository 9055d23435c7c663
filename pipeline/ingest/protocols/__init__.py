"""Tracker protocols, one module per protocol; see :mod:`.base` for the contract.

Each module listed in :data:`PROTOCOL_MODULES` defines ``PROTOCOL``, a
:class:`~pipeline.ingest.protocols.base.TrackerProtocol`.  :func:`tracker_protocols`
loads them by name, in the order of the README's port table, which is also the
order the detection port tries them in.
"""

from __future__ import annotations

import importlib
from functools import cache

from pipeline.ingest.protocols.base import TrackerProtocol

__all__ = ["PROTOCOL_MODULES", "tracker_protocol", "tracker_protocols"]

#: The binary and text protocols spoken over TCP/UDP, in the README's order.
PROTOCOL_MODULES = (
    "teltonika",
    "gt06",
    "h02",
    "gps103",
    "tk103",
    "gl200",
    "meitrack",
    "watch",
    "suntech",
)


@cache
def tracker_protocols() -> dict[str, TrackerProtocol]:
    """Every tracker protocol by name."""
    found: dict[str, TrackerProtocol] = {}
    for name in PROTOCOL_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        protocol: TrackerProtocol = module.PROTOCOL
        found[protocol.name] = protocol
    return found


def tracker_protocol(name: str) -> TrackerProtocol:
    """One protocol by name; :class:`ValueError` lists the known names."""
    protocols = tracker_protocols()
    if name not in protocols:
        message = f"protocol must be one of {sorted(protocols)}, got {name!r}"
        raise ValueError(message)
    return protocols[name]
