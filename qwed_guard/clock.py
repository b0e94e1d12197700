"""The one source of time and sleep for every layer.

Every layer reads time and waits through the active clock, so testing mode can swap in a
fake clock under which waits are recorded instead of slept.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """What a layer needs from time: a monotonic reading, wall time, and two ways to wait."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: `time.monotonic`, `time.time`, `time.sleep` and `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class FakeClock:
    """A clock that never sleeps: a wait advances virtual time and is recorded in `waits`.

    Thread-safe, so guarded calls made from several threads under testing mode share one
    consistent timeline.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_767_225_600.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._wall_offset = wall_start - start
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move virtual time forward without recording a wait (time passing between calls)."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards, got {seconds}")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        with self._lock:
            self.waits.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        # Still yield to the event loop, as a real sleep would.
        await asyncio.sleep(0)


_system = SystemClock()
_active: Clock = _system


def active() -> Clock:
    """The clock every layer uses right now."""
    return _active


def install(clock: Clock | None) -> Clock:
    """Make `clock` the active clock (None restores real time); returns the previous one."""
    global _active, monotonic, wall
    previous = _active
    _active = clock if clock is not None else _system
    if _active is _system:
        # Real time is read on every call's hot path: bind the C functions themselves.
        monotonic, wall = time.monotonic, time.time
    else:
        monotonic, wall = _active_monotonic, _active_wall
    return previous


def _active_monotonic() -> float:
    return _active.monotonic()


def _active_wall() -> float:
    return _active.wall()


monotonic: Callable[[], float] = time.monotonic
"""Monotonic seconds from the active clock (call it as `clock.monotonic()`)."""
wall: Callable[[], float] = time.time
"""Wall-clock seconds since the epoch from the active clock (call it as `clock.wall()`)."""
