"""Notifications: which events reach which users, and how they are delivered.

- :mod:`.rules`: a rule's shape and checks (event types, devices, groups,
  channels); :mod:`.store`: rules in PostgreSQL.
- :mod:`.service`: the notifier, a consumer group on the ``events`` topic that
  hands deliveries to per-channel queues (:mod:`.channels`) for e-mail
  (:mod:`.mail`) and webhooks (:mod:`.webhook`); :mod:`.matching` finds the
  rules an event reaches.
- The ``web`` channel is served by the API's live WebSocket
  (:mod:`pipeline.api.live`).
"""
