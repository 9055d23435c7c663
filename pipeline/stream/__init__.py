"""The streaming job: positions from Kafka -> cleaned, indexed fixes in the stores.

:mod:`pipeline.stream.records` turns a ``rastro.v1.Fix`` into the row the job passes
on and decides, per device, what is a duplicate and what is newest;
:mod:`pipeline.stream.latest` keeps the newest fix of each device in Redis;
:mod:`pipeline.stream.functions` wraps both as Flink functions; and
:mod:`pipeline.stream.job` builds the job graph and is the process entry point.
"""
