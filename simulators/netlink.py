"""A TCP relay between a device and the broker that behaves like a thin, flaky 4G link.

It runs its own asyncio loop in a thread, listens on a free loopback port and forwards to the
real broker. ``rate_bytes_per_s`` caps each direction (a 4G IoT uplink), ``cut()`` drops every
connection and refuses new ones (coverage lost, NAT timeout), ``restore()`` lets them back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from simulators.broker import free_port


class ShapedLink:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        rate_bytes_per_s: int = 0,
        latency_s: float = 0.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.rate = rate_bytes_per_s
        self.latency_s = latency_s
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
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
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

    async def _throttle(self, direction: str, size: int) -> None:
        if self.rate <= 0:
            return
        # Each direction has its own budget; time owed is slept off before forwarding.
        now = time.monotonic()
        ready = max(self._bucket.get(direction, now), now)
        self._bucket[direction] = ready + size / self.rate
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
