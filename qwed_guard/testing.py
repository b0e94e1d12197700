"""Testing mode: guarded calls never sleep, and every wait is recorded.

    from qwed_guard.testing import fake_time

    with fake_time() as clock:
        verify("What is 2 + 2?")
    assert clock.waits == [1.0, 2.0]

The module is also a pytest plugin (registered by the package): the `fake_clock` fixture runs a
test in testing mode and hands it the clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from qwed_guard import clock as _clock
from qwed_guard.clock import FakeClock

__all__ = ["FakeClock", "fake_time", "is_testing"]


@contextmanager
def fake_time(start: float = 1_000.0) -> Iterator[FakeClock]:
    """Replace time for every layer: waits advance a virtual clock instead of sleeping."""
    fake = FakeClock(start)
    previous = _clock.install(fake)
    try:
        yield fake
    finally:
        _clock.install(previous)


def is_testing() -> bool:
    """True while testing mode (a fake clock) is active."""
    return isinstance(_clock.active(), FakeClock)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pass
else:

    @pytest.fixture(name="fake_clock")
    def _fake_clock_fixture() -> Iterator[FakeClock]:
        """Run the test in testing mode; the fixture's value is the fake clock."""
        with fake_time() as fake:
            yield fake
