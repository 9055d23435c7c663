"""Rastro's REST API and live WebSocket (Starlette, served by Hypercorn).

:func:`pipeline.api.app.create_api` builds the application from an
:class:`~pipeline.api.app.ApiContext`; :func:`pipeline.api.app.serve_api` runs it.
"""
