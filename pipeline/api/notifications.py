"""Routes of notification rules: which events reach a user, for which devices, and
through which channels."""

from __future__ import annotations

from pipeline.api.openapi import Endpoint

__all__ = ["ENDPOINTS"]

ENDPOINTS: tuple[Endpoint, ...] = ()
