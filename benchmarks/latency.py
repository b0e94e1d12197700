"""A TCP proxy that delays every chunk by a fixed time each way: a Redis "across the network"
on one machine, for the async fleet test and benchmark (a 2 ms round trip: `delay=0.001`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

__all__ = ["LatencyProxy", "delayed"]


class LatencyProxy:
    """Forwards 127.0.0.1:`port` (chosen on start) to 127.0.0.1:`target`, `delay` s each way.

    Chunks are delayed, not serialised: many connections and pipelined requests each take
    `delay`, as on a network link, and their order is kept.
    """

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self.port = started.result(10)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                loop.call_later(self.delay, writer.write, data)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextlib.contextmanager
def delayed(url: str, delay: float) -> Iterator[str]:
    """`url` (redis://127.0.0.1:PORT/...) behind a `LatencyProxy`: the URL to use instead."""
    head, _, rest = url.partition("127.0.0.1:")
    port, _, tail = rest.partition("/")
    proxy = LatencyProxy(int(port), delay)
    proxy.start()
    try:
        yield f"{head}127.0.0.1:{proxy.port}/{tail}"
    finally:
        proxy.stop()
