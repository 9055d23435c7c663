"""Rastro's moving parts: ingest, the streaming job, the stores, the API and the CLI."""
