"""A TCP relay between a device and the broker that behaves like a thin, flaky 4G link.

It runs its own asyncio loop in a thread, listens on a free loopback port and forwards to the
real broker. ``rate_bytes_per_s`` caps each direction (a 4G IoT uplink), ``latency_s`` delays
each piece of data, ``loss_pct`` loses that share of TCP segments: the relay runs over loopback
TCP, which loses nothing, so a lost segment is modelled as what it costs a TCP flow, one
retransmission timeout during which everything behind it waits (seeded, so a replay is
repeatable). ``cut()`` drops every connection and refuses new ones (coverage lost, NAT timeout),
``restore()`` lets them back in, ``reshape()`` changes rate, latency and loss while it runs.

``time_scale``, when given, says how many seconds of the link's time pass per real second (a
replay's accelerated clock): rates and delays are then in the link's time, so a 256 kbit/s link
replayed at 60x carries 60 times as many bytes per real second and its latency is 60 times
shorter in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
import time
from collections.abc import Callable

from simulators.broker import free_port

# A TCP segment on a 4G bearer (MSS of a 1500-byte MTU).
SEGMENT_BYTES = 1460
# Linux never waits less than this before retransmitting a lost segment.
MIN_RTO_S = 0.2


def retransmission_delay(size: int, loss_pct: float, latency_s: float, rng: random.Random) -> float:
    """Seconds ``size`` bytes are held up when each of their segments is lost with
    ``loss_pct`` % probability: one retransmission timeout (200 ms and a round trip) per lost
    segment, since TCP delivers in order and everything behind it waits."""
    if loss_pct <= 0 or size <= 0:
        return 0.0
    segments = math.ceil(size / SEGMENT_BYTES)
    lost = sum(1 for _ in range(segments) if rng.random() * 100 < loss_pct)
    return lost * (MIN_RTO_S + 2 * latency_s)


class ShapedLink:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        rate_bytes_per_s: int = 0,
        latency_s: float = 0.0,
        loss_pct: float = 0.0,
        seed: int = 0,
        time_scale: Callable[[], float] | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.rate = rate_bytes_per_s
        self.latency_s = latency_s
        self.loss_pct = loss_pct
        self.time_scale = time_scale or (lambda: 1.0)
        self.retransmissions_s = 0.0  # link time spent waiting for lost segments
        self._rng = random.Random(seed)
        self.bytes_up = 0
        self.bytes_down = 0
        self._up = True
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="shaped-link"
        )
        self._bucket: dict[str, float] = {}

    def start(self) -> ShapedLink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer, "up"),
            self._pump(up_reader, writer, "down"),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while self._up:
                data = await reader.read(16384)
                if not data or not self._up:
                    break
                delay = self.latency_s + self._loss_delay(len(data))
                if delay > 0:
                    await asyncio.sleep(delay / self.time_scale())
                await self._throttle(direction, len(data))
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _loss_delay(self, size: int) -> float:
        delay = retransmission_delay(size, self.loss_pct, self.latency_s, self._rng)
        self.retransmissions_s += delay
        return delay

    async def _throttle(self, direction: str, size: int) -> None:
        if self.rate <= 0:
            return
        # Each direction has its own budget; time owed is slept off before forwarding.
        now = time.monotonic()
        ready = max(self._bucket.get(direction, now), now)
        self._bucket[direction] = ready + size / (self.rate * self.time_scale())
        if ready > now:
            await asyncio.sleep(ready - now)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._up = False

        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    def restore(self) -> None:
        self._up = True

    @property
    def is_up(self) -> bool:
        return self._up

    @property
    def connections(self) -> int:
        """Connections relayed right now (a device that is connected has one)."""
        return len(self._writers) // 2

    def reshape(
        self, *, rate_bytes_per_s: int = 0, latency_s: float = 0.0, loss_pct: float = 0.0
    ) -> None:
        """From now on the link has this rate, latency and loss (connections are kept: a cell
        getting congested does not reset TCP flows)."""
        self.rate, self.latency_s, self.loss_pct = rate_bytes_per_s, latency_s, loss_pct

    def stop(self) -> None:
        self.cut()

        async def shutdown() -> None:
            if self._server:
                self._server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> ShapedLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
