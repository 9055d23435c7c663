"""TCP and UDP servers for the tracker protocols, and a port that detects them.

Every protocol of :mod:`pipeline.ingest.protocols` gets a TCP listener on its own
port, and a UDP endpoint on the same port number when it speaks UDP.  A further TCP
port (the detection port) reads a connection's first bytes, picks the protocol whose
``looks_like`` accepts them and serves the connection as that protocol.

Per TCP connection, in order, one frame at a time:

1. Bytes read go to the protocol's session through a :class:`TrackerStream`, which
   cuts them into frames and keeps at most ``max_frame_bytes`` of an unfinished
   one.  A framing error closes the connection: the stream cannot be trusted any
   more.  A connection silent for ``idle_timeout_s`` is closed (one sweep over all
   connections a few times per timeout, not a timer per read).
2. Each frame is decoded; an invalid one is dropped with one log line naming the
   protocol, the remote address and the reason, and the connection goes on
   (:data:`MAX_MALFORMED_IN_A_ROW` in a row close it).  A decoder that raises
   anything but :class:`~pipeline.ingest.protocols.base.FrameError` has a bug:
   logged as such with where it was raised, the frame dropped, the server unharmed.
3. The first frame that names a device is checked (:class:`DeviceAdmission`).  An
   unknown device gets the protocol's refusal, if it has one, and is disconnected.
   An accepted device's previous connection, over any protocol of this server, is
   closed: the device reconnected.
4. Each frame takes one token of the device's rate (:class:`DeviceRateLimiter`,
   the tokens of all connections taken together by :class:`TokenBatches`); a frame
   over the rate gets no reply and is counted, so the device sends it again.
5. Fixes go to the positions topic, events (alarms) to the events topic.  The
   device's reply is written only once Kafka acknowledged all of them; when Kafka
   did not, there is no reply and the connection is closed, so the device keeps its
   records and sends them again.  No record the device saw acknowledged is lost.

Connections do not wait on each other: decoding is short and synchronous, and each
connection waits for Kafka on its own.  UDP datagrams are handled the same way,
with a session per remote address (at most ``MAX_UDP_PEERS``, the oldest
forgotten first) and at most ``MAX_UDP_IN_FLIGHT`` datagrams being handled at once;
more are dropped unanswered and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import structlog

from pipeline.ingest.admission import DeviceAdmission, DirectoryUnavailable
from pipeline.ingest.events import EventPublisher
from pipeline.ingest.framing import TrackerStream, now_ms
from pipeline.ingest.limiter import DeviceRateLimiter
from pipeline.ingest.protocols import tracker_protocols
from pipeline.ingest.protocols.base import Decoded, FrameError, TrackerProtocol
from pipeline.ingest.service import IngestService
from pipeline.kafka import EVENTS, KafkaUnavailable

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "DETECT_PORT",
    "TokenBatches",
    "TrackerServer",
    "detect_protocol",
]

log = structlog.get_logger("rastro.ingest.trackers")

DEFAULT_IDLE_TIMEOUT_S = 600.0
DETECT_PORT = 5000
#: Most bytes read from a socket at once.
READ_CHUNK = 65_536
#: ``looks_like`` sees at most this many of a connection's first bytes.
DETECT_BYTES = 64
#: How long the detection port waits for more first bytes once some arrived.
DETECT_SETTLE_S = 0.25
#: A link over its rate is logged at most once per this many seconds.
RATE_LOG_S = 60.0
#: Malformed frames in a row after which a connection is closed (a flood of junk).
MAX_MALFORMED_IN_A_ROW = 32
MAX_UDP_PEERS = 10_000
MAX_UDP_IN_FLIGHT = 1_000
LISTEN_BACKLOG = 1024
#: Most bytes of replies waiting in a socket before the device must read them.
WRITE_BUFFER_LIMIT = 65_536
#: Longest pause between two sweeps for idle connections.
IDLE_SWEEP_MAX_S = 5.0
#: How long :meth:`TrackerServer.stop` lets connections finish before cutting them.
STOP_GRACE_S = 1.0


def detect_protocol(
    first_bytes: bytes, protocols: Mapping[str, TrackerProtocol]
) -> TrackerProtocol | None:
    """The first TCP protocol, in ``protocols`` order, whose ``looks_like`` accepts.

    Only the first :data:`DETECT_BYTES` bytes are shown.  A ``looks_like`` that
    raises counts as a no.
    """
    head = first_bytes[:DETECT_BYTES]
    if not head:
        return None
    for protocol in protocols.values():
        if not protocol.tcp:
            continue
        try:
            if protocol.looks_like(head):
                return protocol
        except Exception:  # a buggy looks_like must not stop detection
            continue
    return None


class TokenBatches:
    """One rate token per frame, taken for many connections in one Redis round trip.

    Every connection asks for its frame's token; the requests that arrive while a
    round trip is under way go together in the next one (one
    :meth:`DeviceRateLimiter.allow_many`), so a thousand busy connections cost a
    few round trips per second, not a thousand, and Redis sees one connection.
    """

    def __init__(self, limiter: DeviceRateLimiter) -> None:
        self.limiter = limiter
        self._waiting: list[tuple[str, asyncio.Future[bool]]] = []
        self._taking: asyncio.Task[None] | None = None
        self.round_trips = 0

    async def take(self, device: str) -> bool:
        """Take one of ``device``'s tokens; False when it is over its rate."""
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((device, granted))
        if self._taking is None:
            self._taking = loop.create_task(self._take_waiting())
        return await granted

    async def _take_waiting(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # let the connections ready now join this trip
                batch, self._waiting = self._waiting, []
                await self._take_batch(batch)
        finally:
            self._taking = None

    async def _take_batch(self, batch: list[tuple[str, asyncio.Future[bool]]]) -> None:
        self.round_trips += 1
        try:
            granted = await self.limiter.allow_many(Counter(d for d, _ in batch))
        except Exception as error:  # the limiter falls back by itself; this is a bug
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        for device, waiter in batch:
            allowed = granted.get(device, 0) > 0
            if allowed:
                granted[device] -= 1
            if not waiter.done():
                waiter.set_result(allowed)


class _Link:
    """What the server needs of a TCP connection or a UDP peer."""

    def __init__(self, protocol: TrackerProtocol, host: str, remote: str) -> None:
        self.protocol = protocol.name
        self.session = protocol.session()
        self.host = host
        self.remote = remote
        self.log: Any = log.bind(protocol=protocol.name, remote=remote)
        self.devices: set[str] = set()
        self.limited_since_log = 0
        self.limit_logged_at: float | None = None
        self.malformed_in_a_row = 0

    def accept(self, device: str) -> None:
        """``device`` was admitted on this link; name it in the link's log lines."""
        if not self.devices:
            self.log = self.log.bind(device=device)
        self.devices.add(device)

    def send(self, data: bytes) -> None:
        """Send bytes to the device."""
        raise NotImplementedError

    def close(self, reason: str) -> None:
        """Stop serving this link."""
        raise NotImplementedError


class _TcpLink(_Link):
    def __init__(
        self,
        protocol: TrackerProtocol,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        host, remote = _peer_names(writer.get_extra_info("peername"))
        super().__init__(protocol, host, remote)
        self.reader = reader
        self.writer = writer
        self.stream = TrackerStream(self.session)
        self.closed_because: str | None = None
        #: When the device last sent a byte or was last answered (monotonic s).
        self.last_active = time.monotonic()

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self, reason: str) -> None:
        if self.closed_because is None:
            self.closed_because = reason
        self.writer.close()


class _UdpPeer(_Link):
    def __init__(
        self,
        protocol: TrackerProtocol,
        endpoint: _UdpEndpoint,
        address: tuple[Any, ...],
    ) -> None:
        host, remote = _peer_names(address)
        super().__init__(protocol, host, remote)
        self.endpoint = endpoint
        self.address = address
        self.last_seen = time.monotonic()

    def send(self, data: bytes) -> None:
        if self.endpoint.transport is not None:
            self.endpoint.transport.sendto(data, self.address)

    def close(self, reason: str) -> None:
        self.endpoint.forget(self)


class TrackerServer:
    """The tracker protocols' listeners around one ingest service (module doc).

    ``ingest`` brings the Kafka producer, the positions topic, the device directory
    (required) and the rate limiter (optional: none means no limit).  ``protocols``
    defaults to every protocol of :mod:`pipeline.ingest.protocols`, in the order the
    detection port tries them.  ``counters`` holds what happened, for metrics.
    """

    def __init__(
        self,
        ingest: IngestService,
        *,
        protocols: Mapping[str, TrackerProtocol] | None = None,
        register_unknown: bool = False,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        events_topic: str = EVENTS,
    ) -> None:
        if ingest.directory is None:
            message = "the ingest service needs a device directory for trackers"
            raise ValueError(message)
        if idle_timeout_s <= 0:
            message = f"idle_timeout_s must be positive, got {idle_timeout_s!r}"
            raise ValueError(message)
        self.ingest = ingest
        self.tokens = None if ingest.limiter is None else TokenBatches(ingest.limiter)
        self.events = EventPublisher(ingest.producer, events_topic)
        self.admission = DeviceAdmission(
            ingest.directory, register_unknown=register_unknown
        )
        self.protocols = dict(
            protocols if protocols is not None else tracker_protocols()
        )
        self.idle_timeout_s = idle_timeout_s
        self.counters: Counter[str] = Counter()
        #: Bound ports, by ``"<protocol>/tcp"``, ``"<protocol>/udp"`` and ``"detect"``.
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []
        self._endpoints: list[_UdpEndpoint] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._links: set[_TcpLink] = set()
        self._by_device: dict[str, _TcpLink] = {}
        self._kafka_failing = False
        self._directory_failing = False
        self._sweeper: asyncio.Task[None] | None = None

    # -- listening -------------------------------------------------------------------

    async def start(
        self, host: str, ports: Mapping[str, int], *, detect_port: int | None = None
    ) -> None:
        """Listen on ``host``: ``ports[name]`` per protocol, and the detection port.

        A port of 0 takes any free port (see :attr:`ports`); a protocol left out of
        ``ports`` is not served.  UDP protocols listen on the TCP port's number.
        """
        unknown = sorted(set(ports) - set(self.protocols))
        if unknown:
            message = (
                f"no tracker protocol named {unknown}; known: {list(self.protocols)}"
            )
            raise ValueError(message)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._close_idle())
        try:
            for name, port in ports.items():
                await self._listen(host, self.protocols[name], port)
            if detect_port is not None:
                server = await self._tcp_server(self._serve_detected, host, detect_port)
                self.ports["detect"] = _bound_port(server)
                log.info(
                    "tracker_listening",
                    protocol="detect",
                    host=host,
                    tcp=self.ports["detect"],
                )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their tasks."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        for endpoint in self._endpoints:
            endpoint.close()
        for link in list(self._links):
            link.close("server stopping")
        tasks = list(self._tasks)
        if tasks:
            # Closed connections end by themselves; one waiting on Kafka is cut.
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        self._endpoints.clear()

    async def serve(
        self,
        host: str,
        ports: Mapping[str, int],
        shutdown: asyncio.Event,
        *,
        detect_port: int | None = None,
    ) -> None:
        """Listen until ``shutdown`` is set, then stop."""
        await self.start(host, ports, detect_port=detect_port)
        try:
            await shutdown.wait()
        finally:
            await self.stop()

    async def _listen(self, host: str, protocol: TrackerProtocol, port: int) -> None:
        async def serve_protocol(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            with self._tracking():
                await self._serve_connection(protocol, reader, writer, b"")

        bound: dict[str, int] = {}
        if protocol.tcp:
            server = await self._tcp_server(serve_protocol, host, port)
            port = bound["tcp"] = self.ports[f"{protocol.name}/tcp"] = _bound_port(
                server
            )
        if protocol.udp:
            endpoint = _UdpEndpoint(self, protocol)
            loop = asyncio.get_running_loop()
            await loop.create_datagram_endpoint(
                lambda: endpoint, local_addr=(host, port)
            )
            self._endpoints.append(endpoint)
            bound["udp"] = self.ports[f"{protocol.name}/udp"] = endpoint.port()
        log.info("tracker_listening", protocol=protocol.name, host=host, **bound)

    async def _tcp_server(
        self,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        host: str,
        port: int,
    ) -> asyncio.Server:
        server = await asyncio.start_server(
            handler, host, port, backlog=LISTEN_BACKLOG, reuse_address=True
        )
        self._servers.append(server)
        return server

    # -- TCP connections -------------------------------------------------------------

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        """Keep the current task known, so that :meth:`stop` can cancel it.

        The cancellation ends here: asyncio's stream server (3.11) would log a
        connection task that ends cancelled as an error.
        """
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve_detected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with self._tracking():
            try:
                head = await self._first_bytes(reader)
            except BaseException:
                writer.close()
                raise
            protocol = detect_protocol(head, self.protocols)
            if protocol is None:
                self._unrecognised(writer, head)
                return
            await self._serve_connection(protocol, reader, writer, head)

    async def _first_bytes(self, reader: asyncio.StreamReader) -> bytes:
        """A connection's first bytes: up to 64 of them, or whatever came at once."""
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                head = await reader.read(READ_CHUNK)
        except (TimeoutError, ConnectionError):
            return b""
        while head and len(head) < DETECT_BYTES:
            try:
                async with asyncio.timeout(DETECT_SETTLE_S):
                    more = await reader.read(READ_CHUNK)
            except (TimeoutError, ConnectionError):
                break
            if not more:
                break
            head += more
        return head

    def _unrecognised(self, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.close()
        if not head:
            return
        self.counters["unrecognised"] += 1
        _, remote = _peer_names(writer.get_extra_info("peername"))
        log.warning(
            "tracker_protocol_unrecognised",
            remote=remote,
            first_bytes=head[:DETECT_BYTES].hex(),
        )

    async def _serve_connection(
        self,
        protocol: TrackerProtocol,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        initial: bytes,
    ) -> None:
        link = _TcpLink(protocol, reader, writer)
        self._links.add(link)
        self.counters["connections"] += 1
        link.log.debug("tracker_connected")
        try:
            await self._read_frames(link, initial)
        except Exception as error:  # a bug here must end one connection, no more
            link.log.error("tracker_connection_failed", reason=_reason(error))
        finally:
            self._forget(link)
            link.close("finished")
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            link.log.debug("tracker_disconnected", reason=link.closed_because)

    async def _read_frames(self, link: _TcpLink, initial: bytes) -> None:
        data = initial
        while True:
            if data and not await self._take_bytes(link, data):
                return
            if not await self._drain(link):
                return
            link.last_active = time.monotonic()
            try:
                data = await link.reader.read(READ_CHUNK)
            except ConnectionError:
                return
            if not data:
                return
            link.last_active = time.monotonic()

    async def _drain(self, link: _TcpLink) -> bool:
        """Wait while a device does not read its replies (bounded by the idle time).

        Replies are small: this waits only once they pile up in the socket buffer.
        """
        if link.writer.transport.get_write_buffer_size() < WRITE_BUFFER_LIMIT:
            return True
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                await link.writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _close_idle(self) -> None:
        """Close connections silent for ``idle_timeout_s``, checking a few times each.

        One sweep over the connections instead of a timer per read: a read's
        timer would cost more than the read itself.
        """
        period = max(0.05, min(self.idle_timeout_s / 4, IDLE_SWEEP_MAX_S))
        while True:
            await asyncio.sleep(period)
            silent_since = time.monotonic() - self.idle_timeout_s
            for link in list(self._links):
                if link.last_active < silent_since and link.closed_because is None:
                    self.counters["idle_closed"] += 1
                    link.close("idle")
                    link.log.debug(
                        "tracker_connection_idle", idle_s=self.idle_timeout_s
                    )

    async def _take_bytes(self, link: _TcpLink, data: bytes) -> bool:
        """Frame and handle ``data``; False when the connection must close."""
        try:
            frames = link.stream.feed(data)
        except FrameError as error:
            self._malformed(link, "split", str(error))
            return False
        except Exception as error:
            self._decoder_bug(link, "split", error)
            return False

        received_ms = now_ms()
        for frame in frames:
            if not await self._take_frame(link, frame, received_ms):
                return False
            if link.writer.is_closing():
                return False
        return True

    async def _take_frame(self, link: _TcpLink, frame: bytes, received_ms: int) -> bool:
        try:
            decoded = link.session.decode(frame, server_time_ms=received_ms)
        except FrameError as error:
            self._malformed(link, "decode", str(error))
            return self._tolerable(link)
        except Exception as error:
            self._decoder_bug(link, "decode", error)
            return self._tolerable(link)
        link.malformed_in_a_row = 0
        return await self._take(link, decoded)

    def _tolerable(self, link: _Link) -> bool:
        link.malformed_in_a_row += 1
        if link.malformed_in_a_row < MAX_MALFORMED_IN_A_ROW:
            return True
        link.log.warning(
            "tracker_connection_closed",
            reason=f"{link.malformed_in_a_row} malformed frames in a row",
        )
        return False

    def _forget(self, link: _TcpLink) -> None:
        self._links.discard(link)
        for device in link.devices:
            if self._by_device.get(device) is link:
                del self._by_device[device]

    # -- what every frame goes through -----------------------------------------------

    async def _take(self, link: _Link, decoded: Decoded) -> bool:
        """Admit, rate-limit, publish, reply; False when the link must close."""
        self.counters["frames"] += 1
        if not await self._identify(link, decoded):
            return False
        device = decoded.device or link.session.device
        if device is not None and not await self._within_rate(link, device):
            return True
        if not await self._publish(link, decoded):
            return False
        if decoded.reply is not None:
            link.send(decoded.reply)
        return True

    async def _identify(self, link: _Link, decoded: Decoded) -> bool:
        for device in _strangers(decoded, link.devices):
            try:
                accepted = await self.admission.admit(
                    device, host=link.host, protocol=link.protocol
                )
            except DirectoryUnavailable as error:
                self._directory_unavailable(link, error)
                link.close("device directory unavailable")
                return False
            if not accepted:
                self.counters["refused"] += 1
                if decoded.refusal is not None:
                    link.send(decoded.refusal)
                link.close("unknown device")
                return False
            self._accept(link, device)
        if self._directory_failing:
            self._directory_failing = False
            log.info("tracker_directory_recovered")
        return True

    def _accept(self, link: _Link, device: str) -> None:
        link.accept(device)
        if not isinstance(link, _TcpLink):
            return
        previous = self._by_device.get(device)
        self._by_device[device] = link
        if previous is not None and previous is not link:
            self.counters["replaced"] += 1
            previous.close("replaced by a new connection")
            link.log.info(
                "tracker_connection_replaced",
                previous_remote=previous.remote,
                previous_protocol=previous.protocol,
            )

    async def _within_rate(self, link: _Link, device: str) -> bool:
        if self.tokens is None or await self.tokens.take(device):
            return True
        limiter = self.tokens.limiter
        self.counters["rate_limited"] += 1
        link.limited_since_log += 1
        now = time.monotonic()
        if link.limit_logged_at is None or now - link.limit_logged_at > RATE_LOG_S:
            link.log.warning(
                "tracker_rate_limited",
                rate=limiter.rate,
                refused=link.limited_since_log,
            )
            link.limit_logged_at = now
            link.limited_since_log = 0
        return False

    async def _publish(self, link: _Link, decoded: Decoded) -> bool:
        if not decoded.fixes and not decoded.events:
            return True
        try:
            await self.ingest.publish(list(enumerate(decoded.fixes)))
            await self.events.publish(decoded.events)
        except KafkaUnavailable as error:
            self.counters["kafka_failures"] += 1
            if not self._kafka_failing:
                self._kafka_failing = True
                link.log.warning("tracker_kafka_unavailable", error=str(error))
            link.close("Kafka unavailable")
            return False

        if self._kafka_failing:
            self._kafka_failing = False
            log.info("tracker_kafka_recovered")
        self.counters["fixes"] += len(decoded.fixes)
        self.counters["events"] += len(decoded.events)
        return True

    # -- UDP ---------------------------------------------------------------------------

    async def _take_datagram(self, peer: _UdpPeer, datagram: bytes) -> None:
        received_ms = now_ms()
        try:
            decoded = peer.session.decode_datagram(datagram, server_time_ms=received_ms)
        except FrameError as error:
            self._malformed(peer, "datagram", str(error))
            return
        except Exception as error:
            self._decoder_bug(peer, "datagram", error)
            return
        try:
            await self._take(peer, decoded)
        except Exception as error:  # a bug here must cost one datagram, no more
            peer.log.error("tracker_datagram_failed", reason=_reason(error))

    # -- log lines ---------------------------------------------------------------------

    def _malformed(self, link: _Link, stage: str, reason: str) -> None:
        self.counters["malformed"] += 1
        link.log.warning("tracker_frame_malformed", stage=stage, reason=reason)

    def _decoder_bug(self, link: _Link, stage: str, error: Exception) -> None:
        self.counters["decoder_errors"] += 1
        link.log.error(
            "tracker_decoder_failed",
            stage=stage,
            reason=_reason(error),
            where=_where(error),
        )

    def _directory_unavailable(self, link: _Link, error: Exception) -> None:
        self.counters["directory_failures"] += 1
        if not self._directory_failing:
            self._directory_failing = True
            link.log.warning("tracker_directory_unavailable", error=str(error))


class _UdpEndpoint(asyncio.DatagramProtocol):
    """One protocol's UDP port: a session per remote address, bounded."""

    def __init__(self, server: TrackerServer, protocol: TrackerProtocol) -> None:
        self.server = server
        self.protocol = protocol
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: OrderedDict[tuple[Any, ...], _UdpPeer] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(self.tasks) >= MAX_UDP_IN_FLIGHT:
            self.server.counters["udp_dropped"] += 1
            return
        peer = self._peer(addr)
        task = asyncio.get_running_loop().create_task(
            self.server._take_datagram(peer, data)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def forget(self, peer: _UdpPeer) -> None:
        if self.peers.get(peer.address) is peer:
            del self.peers[peer.address]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in self.tasks:
            task.cancel()

    def _peer(self, address: tuple[Any, ...]) -> _UdpPeer:
        now = time.monotonic()
        peer = self.peers.get(address)
        if peer is None or now - peer.last_seen > self.server.idle_timeout_s:
            peer = _UdpPeer(self.protocol, self, address)
            self.peers[address] = peer
        peer.last_seen = now
        self.peers.move_to_end(address)
        while len(self.peers) > MAX_UDP_PEERS:
            self.peers.popitem(last=False)
        return peer


def _strangers(decoded: Decoded, accepted: set[str]) -> list[str]:
    """The devices a frame speaks for that are not accepted yet, named one first."""
    strangers: list[str] = []
    if decoded.device is not None and decoded.device not in accepted:
        strangers.append(decoded.device)
    devices = [fix.device for fix in decoded.fixes]
    devices += [event.device for event in decoded.events]
    for device in devices:
        if device not in accepted and device not in strangers:
            strangers.append(device)
    return strangers


def _peer_names(address: Any) -> tuple[str, str]:
    """``(host, "host:port")`` of a socket address (IPv4 or IPv6)."""
    if not isinstance(address, tuple) or len(address) < 2:
        return "unknown", "unknown"
    host, port = str(address[0]), address[1]
    remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return host, remote


def _bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _where(error: BaseException) -> str:
    """``file:line`` where an unexpected exception was raised: the bug's address."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{last.filename}:{last.lineno}"
