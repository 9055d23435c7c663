"""Routes of what the streaming job derives: trips, stops, summaries, events, H3
aggregates, and the geofences it evaluates."""

from __future__ import annotations

from pipeline.api.openapi import Endpoint

__all__ = ["ENDPOINTS"]

ENDPOINTS: tuple[Endpoint, ...] = ()
