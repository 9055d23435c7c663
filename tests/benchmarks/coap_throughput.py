"""Benchmark: confirmable CoAP POSTs per second, each answered after Kafka's ack.

Run it (it starts its own Kafka broker unless given one)::

    .venv/bin/python -m tests.benchmarks.coap_throughput --seconds 10 --devices 64

The server is :class:`pipeline.ingest.coap.CoapServer` in this process, on an
:class:`~pipeline.ingest.service.IngestService` with a real
:class:`~pipeline.kafka.DurableProducer` (``acks=all``, idempotent, linger 5 ms)
and no device directory (every device is taken as registered: PostgreSQL is out of
the measurement; with it, a known device costs a cache lookup per request).  The
load comes from a separate process, so client and server do not share an event
loop: ``--devices`` aiocoap client contexts, one UDP socket each (CoAP allows one
outstanding confirmable request per peer, NSTART = 1, so one context is one
device), each posting one JSON fix, waiting for the 2.04, posting the next.  It
prints requests per second over the measured window (after a 2 s warm-up), the
latency percentiles from send to 2.04, how many responses came piggybacked on the
ACK rather than as a separate response after an empty ACK, and the CPU time the
server process spent (its threads included) per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

WARM_UP_S = 2.0


async def _device(
    number: int, port: int, until: float, start: float
) -> tuple[list[float], Counter[str]]:
    import aiocoap
    from aiocoap.numbers.codes import Code

    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    index = 0
    try:
        while time.monotonic() < until:
            index += 1
            document = {
                "uniqueId": f"bench-{number:04d}",
                "time": f"2025-05-09T04:{index // 60 % 60:02d}:{index % 60:02d}Z",
                "latitude": 40.4 + index * 1e-5,
                "longitude": -3.7,
                "speed": 30.0,
            }
            request = aiocoap.Message(
                code=Code.POST,
                uri=f"coap://127.0.0.1:{port}/positions",
                payload=json.dumps(document).encode(),
                content_format=50,
            )
            sent = time.monotonic()
            response = await context.request(request).response
            if sent < start:
                continue
            latencies.append(time.monotonic() - sent)
            kind = "piggybacked" if response.mtype == aiocoap.ACK else "separate"
            outcomes[f"{response.code}/{kind}"] += 1
    finally:
        await context.shutdown()
    return latencies, outcomes


async def _load(port: int, devices: int, seconds: float) -> dict[str, Any]:
    start = time.monotonic() + WARM_UP_S
    until = start + seconds
    results = await asyncio.gather(
        *(_device(number, port, until, start) for number in range(devices))
    )
    latencies = sorted(value for values, _ in results for value in values)
    outcomes: Counter[str] = Counter()
    for _, counts in results:
        outcomes.update(counts)
    return {"latencies": latencies, "outcomes": dict(outcomes)}


def _load_process(port: int, devices: int, seconds: float, queue: Any) -> None:
    queue.put(asyncio.run(_load(port, devices, seconds)))


async def measure(kafka: str | None, devices: int, seconds: float) -> dict[str, Any]:
    """Serve CoAP on a real Kafka and drive it from a child process."""
    from pipeline.kafka import ensure_topics
    from pipeline.ports import free_port
    from pipeline.services.kafka import EmbeddedKafka

    broker = None
    with tempfile.TemporaryDirectory() as folder:
        if kafka is None:
            broker = EmbeddedKafka(Path(folder), port=free_port())
            broker.start()
            kafka = broker.bootstrap_servers
        try:
            topic = f"bench-coap-{int(time.time())}"
            await asyncio.to_thread(ensure_topics, kafka, {topic: 8})
            return await _serve_and_load(kafka, topic, devices, seconds)
        finally:
            if broker is not None:
                broker.stop()


async def _serve_and_load(
    kafka: str, topic: str, devices: int, seconds: float
) -> dict[str, Any]:
    from pipeline.ingest.coap import CoapServer
    from pipeline.ingest.service import IngestService
    from pipeline.kafka import DurableProducer
    from pipeline.ports import free_port

    port = free_port()
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    async with DurableProducer(kafka) as producer:
        ingest = IngestService(producer, None, topic=topic)
        async with CoapServer(ingest, "127.0.0.1", port):
            client = spawn.Process(
                target=_load_process, args=(port, devices, seconds, queue)
            )
            cpu_before = time.process_time()
            client.start()
            result: dict[str, Any] = await asyncio.to_thread(queue.get)
            result["server_cpu_s"] = time.process_time() - cpu_before
            await asyncio.to_thread(client.join)
        result["accepted"] = ingest.accepted
    return result


def _report(result: dict[str, Any], devices: int, seconds: float) -> None:
    latencies = result["latencies"]
    count = len(latencies)
    centiles = statistics.quantiles(latencies, n=100) if count > 1 else [0.0] * 99
    print(f"devices (client contexts): {devices}, window: {seconds:g} s")
    print(f"requests answered 2.04 in the window: {count}")
    print(f"requests per second: {count / seconds:.0f}")
    print(
        f"latency send -> 2.04: p50 {centiles[49] * 1000:.1f} ms, "
        f"p99 {centiles[98] * 1000:.1f} ms"
    )
    print(f"responses: {result['outcomes']}")
    accepted = result["accepted"]
    print(f"fixes Kafka acknowledged (warm-up included): {accepted}")
    print(
        f"server process CPU: {result['server_cpu_s']:.1f} s, "
        f"{result['server_cpu_s'] / max(accepted, 1) * 1e6:.0f} us per request"
    )


def main() -> None:
    """Parse the options, measure, print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kafka", help="HOST:PORT; default: start a broker")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    result = asyncio.run(measure(arguments.kafka, arguments.devices, arguments.seconds))
    _report(result, arguments.devices, arguments.seconds)


if __name__ == "__main__":
    main()
