"""A circuit breaker and an alerter under threads page once per outage: calls the breaker
refused during its half-open probe, ending after the probe resolved the alert, page no more."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from qwed_guard.alerts import alert_on_failures
from qwed_guard.alerts.delivery import shutdown
from qwed_guard.alerts.layer import DEFAULT_STORE
from qwed_guard.breaker import CircuitOpen, circuit_breaker
from qwed_guard.clock import FakeClock
from qwed_guard.context import CallContext
from qwed_guard.layer import CallOutcome, Layer, guard


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


class HoldRefusals(Layer):
    """Holds each refused call until `release` is set: what a slow thread does by chance."""

    kind = "hold"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = 0
        self.lock = threading.Lock()

    def exit(self, ctx: CallContext, state: None, outcome: CallOutcome) -> CallOutcome:
        if isinstance(outcome.exception, CircuitOpen):
            with self.lock:
                self.held += 1
            assert self.release.wait(5)
        return outcome


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    DEFAULT_STORE.clear()
    yield
    shutdown(2.0)
    DEFAULT_STORE.clear()


def test_refusals_during_the_probe_do_not_page_again(fake_clock: FakeClock) -> None:
    failing = True
    probe_release = threading.Event()
    hold = HoldRefusals()

    def call() -> str:
        if failing:
            raise ConnectionError("down")
        assert probe_release.wait(5)
        return "ok"

    inner = guard(circuit_breaker(failure_threshold=2, recovery_timeout=10)(call), hold)
    ask = alert_on_failures(threshold=2, notify=["log"], retry_delays=[])(inner)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            ask()
    assert [a.kind for a in ask.alerts] == ["triggered"]  # type: ignore[attr-defined]

    failing = False
    fake_clock.advance(10)  # the breaker lets one probe through; the other calls are refused
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def worker() -> None:
        start.wait()
        try:
            outcomes.append(ask())
        except CircuitOpen:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: hold.held == 7)
    probe_release.set()  # the probe succeeds and resolves the alert...
    wait_until(lambda: "ok" in outcomes)
    assert [a.kind for a in ask.alerts] == ["triggered", "resolved"]  # type: ignore[attr-defined]
    hold.release.set()  # ...and only then do the seven refused calls end
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7
    assert [a.kind for a in ask.alerts] == ["triggered", "resolved"]  # type: ignore[attr-defined]

    failing = True  # a new outage, seen by calls that really ran, pages again
    for _ in range(2):
        with pytest.raises(ConnectionError):
            ask()
    kinds = [a.kind for a in ask.alerts]  # type: ignore[attr-defined]
    assert kinds == ["triggered", "resolved", "triggered"]
