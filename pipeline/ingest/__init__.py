"""Ingest: device positions over HTTP (JSON, protobuf, OsmAnd) and MQTT into Kafka.

Every path decodes into :class:`~pipeline.model.Fix` records and hands them to
:class:`~pipeline.ingest.service.IngestService`, which checks the device and its
rate and answers only once Kafka acknowledged (``acks=all``): a device is never told
its upload was taken before it is durable.
"""
