"""Alert delivery off the caller's path: one background thread and bounded queue per channel.

A guarded call only appends the alert to each channel's queue (microseconds); the channel's
worker thread sends it, with the channel's timeout, retrying with backoff on 429, 5xx and
network errors (honouring Retry-After) and not on other 4xx. A failure is logged via loguru and
never reaches the guarded call. A full queue drops the alert and says so. At exit, pending
alerts get a bounded time to go out (`EXIT_FLUSH_TIMEOUT`); `flush(timeout)` does the same now.

Delivery waits in real time (not through `qwed_guard.clock`): it is I/O pacing on its own
thread, and must not move a test's fake clock. Its delays are configurable so tests stay fast.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence

from qwed_guard import hooks as _hooks
from qwed_guard.alerts.channels.base import Channel, DeliveryError
from qwed_guard.alerts.record import Alert
from qwed_guard.errors import bad_parameter
from qwed_guard.outcomes import scrub

__all__ = [
    "DEFAULT_RETRY_DELAYS",
    "EXIT_FLUSH_TIMEOUT",
    "Worker",
    "flush",
    "shutdown",
]

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0, 8.0)
"""Waits between delivery attempts: four attempts in all, about 10 s."""
DEFAULT_QUEUE_SIZE = 1000
MAX_RETRY_AFTER = 60.0
"""A server's Retry-After is honoured up to this many seconds."""
EXIT_FLUSH_TIMEOUT = 5.0
"""Seconds the interpreter waits at exit for pending alerts."""
_DROP_LOG_INTERVAL = 10.0

_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_registry_lock = threading.Lock()
_atexit_registered = False


def _log(level: str, message: str) -> None:
    from loguru import logger

    logger.log(level, "{}", scrub(message))


_MAX_WAIT = 3600.0


def _seconds(value: object) -> bool:
    """True for a finite number of seconds from 0 to an hour (longer waits overflow timers)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= _MAX_WAIT
    )


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(
        cls.__name__ in ("TransportError", "TimeoutException", "NetworkError")
        for cls in type(exc).__mro__
    )


class Worker:
    """Delivers one channel's alerts, in order, on its own daemon thread (started on demand)."""

    def __init__(
        self,
        channel: Channel,
        *,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        self.channel = channel
        delays = tuple(retry_delays)
        if len(delays) > 20 or not all(_seconds(d) for d in delays):
            raise bad_parameter(
                "retry_delays", f"must be at most 20 delays of 0 to {_MAX_WAIT:g} seconds"
            )
        if not _seconds(max_retry_after):
            raise bad_parameter("max_retry_after", f"must be 0 to {_MAX_WAIT:g} seconds")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise bad_parameter("queue_size", f"must be an int >= 1, got {queue_size!r}")
        self.retry_delays = tuple(float(d) for d in delays)
        self.queue_size = queue_size
        self.max_retry_after = float(max_retry_after)
        self._cond = threading.Condition()
        self._items: deque[Alert] = deque()
        self._pending = 0  # queued plus the one being delivered
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_send = float("-inf")
        self._last_drop_log = float("-inf")
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.attempts = 0

    # ------------------------------------------------------------- caller side

    def submit(self, alert: Alert) -> bool:
        """Queue `alert`; False (and a rate-limited warning) if the queue is full."""
        with self._cond:
            if len(self._items) >= self.queue_size:
                self.dropped += 1
                if _hooks.listeners:
                    _hooks.emit(_hooks.AlertDelivered(self.channel.name, "dropped"))
                now = time.monotonic()
                log_drop = now - self._last_drop_log >= _DROP_LOG_INTERVAL
                if log_drop:
                    self._last_drop_log = now
            else:
                self._items.append(alert)
                self._pending += 1
                if self._thread is None or not self._thread.is_alive():
                    self._start()
                self._cond.notify()
                return True
        if log_drop:
            _log(
                "WARNING",
                f"alert queue of {self.channel.name} is full ({self.queue_size}): "
                f"{self.dropped} alert(s) dropped so far",
            )
        return False

    def _start(self) -> None:
        global _atexit_registered
        self._stopping.clear()
        thread = threading.Thread(
            target=self._run, name=f"qwed-guard-alerts:{self.channel.name}", daemon=True
        )
        self._thread = thread
        with _registry_lock:
            _workers.add(self)
            if not _atexit_registered:
                atexit.register(_flush_at_exit)
                _atexit_registered = True
        thread.start()

    @property
    def pending(self) -> int:
        """Alerts queued or being delivered."""
        with self._cond:
            return self._pending

    def flush(self, timeout: float) -> bool:
        """Wait until every queued alert was delivered or given up; False if `timeout` passed."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread (pending alerts are dropped and logged); False if it did not end."""
        self._ask_to_stop()
        with self._cond:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(timeout, 0.0))
            if thread.is_alive():
                return False
        with self._cond:
            self._thread = None
        return True

    def _ask_to_stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------- worker side

    def _count(self, name: str, n: int = 1) -> None:
        with self._cond:
            setattr(self, name, getattr(self, name) + n)
        if _hooks.listeners and name != "attempts":
            _hooks.emit(_hooks.AlertDelivered(self.channel.name, name, n))

    def _run(self) -> None:
        lost = 0
        while True:
            with self._cond:
                while not self._items and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    lost = len(self._items)
                    self._items.clear()
                    self._pending -= lost
                    self._cond.notify_all()
                    break
                alert = self._items.popleft()
            try:
                self._deliver(alert)
            except Exception as exc:  # a bug in a channel must not kill the worker
                self._count("failed")
                _log("ERROR", f"alert delivery to {self.channel.name} crashed: {exc!r}")
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
        # The worker thread owns the channel's connections: it closes them as it ends.
        try:
            self.channel.close()
        except Exception as exc:
            _log("WARNING", f"closing {self.channel.name} failed: {exc!r}")
        if lost:
            self._count("dropped", lost)
            _log("WARNING", f"{lost} alert(s) for {self.channel.name} dropped at shutdown")

    def _wait(self, seconds: float) -> bool:
        """Sleep unless stopping; True if stopping was asked for."""
        return seconds > 0 and self._stopping.wait(seconds)

    def _deliver(self, alert: Alert) -> None:
        attempts = len(self.retry_delays) + 1
        for attempt in range(attempts):
            spacing = self._last_send + self.channel.min_interval - time.monotonic()
            if self._wait(spacing) or self._stopping.is_set():
                self._count("dropped")
                _log("WARNING", f"{alert.kind} alert for {self.channel.name} dropped at shutdown")
                return
            self._count("attempts")
            try:
                self.channel.send(alert)
            except DeliveryError as exc:
                error: Exception = exc
                retryable, retry_after = exc.retryable, exc.retry_after
            except Exception as exc:
                error, retryable, retry_after = exc, _is_network_error(exc), None
            else:
                self._count("sent")
                return
            finally:
                # Spaced from the end of the last send: what the endpoint saw arrive.
                self._last_send = time.monotonic()
            if not retryable or attempt == attempts - 1:
                self._count("failed")
                tried = f"{attempt + 1} attempt{'s' if attempt else ''}"
                _log(
                    "ERROR",
                    f"{alert.kind} alert {alert.key!r} not delivered to {self.channel.name} "
                    f"after {tried}: {type(error).__name__}: {error}",
                )
                return
            delay = self.retry_delays[attempt]
            if retry_after is not None:
                delay = min(retry_after, self.max_retry_after)
            if self._wait(delay):
                self._count("dropped")
                _log("WARNING", f"{alert.kind} alert for {self.channel.name} dropped at shutdown")
                return


def _snapshot() -> list[Worker]:
    with _registry_lock:
        return list(_workers)


def flush(timeout: float = EXIT_FLUSH_TIMEOUT) -> bool:
    """Wait up to `timeout` seconds in all for every channel to deliver its pending alerts."""
    deadline = time.monotonic() + timeout
    done = True
    for worker in _snapshot():
        done = worker.flush(deadline - time.monotonic()) and done
    return done


def shutdown(timeout: float = 1.0) -> None:
    """Stop every delivery thread (they restart on the next alert). Mainly for tests."""
    workers = _snapshot()
    for worker in workers:  # all at once, so one slow channel does not eat the others' time
        worker._ask_to_stop()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.stop(deadline - time.monotonic())


def _flush_at_exit() -> None:
    if not flush(EXIT_FLUSH_TIMEOUT):
        pending = sum(worker.pending for worker in _snapshot())
        _log("WARNING", f"exiting with {pending} alert(s) not delivered")
    shutdown(0.5)
