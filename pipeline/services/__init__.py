"""Servers Rastro can start itself for the no-setup default and for tests.

Each module holds one kind of service (PostgreSQL, Redis, MQTT, Kafka) as a class with
a blocking ``start()`` that returns once the server answers, ``stop()``, and the
context-manager protocol; data lives in a folder given to the constructor, so a
restart keeps it.
"""
