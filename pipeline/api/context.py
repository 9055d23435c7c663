"""What the API needs from the process that runs it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis

from pipeline.api.auth import LoginLimiter
from pipeline.api.live import LiveSource
from pipeline.config import IPNetwork

if TYPE_CHECKING:
    from pipeline.ingest.service import IngestService

__all__ = ["ApiContext"]


@dataclass
class ApiContext:
    """The API's connections and tunables, built once by the supervisor.

    ``ingest`` publishes what devices report over ``POST /positions`` (the ingest
    tier is imported only when a device first reports); without it that route
    answers 503.  ``live_source`` makes a fresh async iterator
    of protobuf ``Fix`` payloads each time the live hub (re)connects; without it the
    WebSocket accepts clients but pushes nothing.  ``events_source`` does the same
    for protobuf ``Event`` payloads (the ``events`` topic); without it the
    WebSocket pushes no events.  ``ready`` is set once the whole
    pipeline runs (the streaming job included); ``/health`` reports it, and without
    it the process counts as ready.  ``webhook_allowed_networks`` are the
    networks a rule's test send may reach besides public addresses.
    """

    pool: asyncpg.Pool
    redis: aioredis.Redis
    ingest: IngestService | None = None
    live_source: LiveSource | None = None
    events_source: LiveSource | None = None
    ready: asyncio.Event | None = None
    live_refresh_s: float = 5.0
    live_queue_size: int = 256
    history_max_days: int = 31
    history_max_limit: int = 50_000
    login_limiter: LoginLimiter = field(default_factory=LoginLimiter)
    webhook_allowed_networks: tuple[IPNetwork, ...] = ()
