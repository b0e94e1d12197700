"""Testing mode: guarded calls never sleep, and every wait is recorded.

    from qwed_guard.testing import fake_time

    with fake_time() as clock:
        verify("What is 2 + 2?")
    assert clock.waits == [1.0, 2.0]

The module is also a pytest plugin (registered by the package): the `fake_clock` fixture runs a
test in testing mode and hands it the clock; `simulated_llm` runs an OpenAI-compatible simulator
for the test (`@pytest.mark.sim(profile="flaky", seed=7)` configures it).

`qwed_server` (session-scoped) runs QWED's real API server (`qwed_guard.sim.qwed_api`) on
127.0.0.1 with its own session-scoped simulator as the LLM (the healthy profile), and
`qwed_api_key` hands each test a fresh API key of it, since the server allows 100 requests per
minute per key. `qwed_server_llm` is that simulator (shared: a test that changes it, say with
an outage, changes it for the whole session). Keep requests in flight on the shared server to
about 10: more can deadlock it (see `QwedApiServer`).

    def test_verify(qwed_server, qwed_api_key):
        client = QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url)
        assert client.verify_math("2 + 2 = 4").is_verified
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from qwed_guard import clock as _clock
from qwed_guard.clock import FakeClock

if TYPE_CHECKING:
    from qwed_guard.sim import SimulatedLLM
    from qwed_guard.sim.qwed_api import QwedApiServer

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

    @pytest.fixture(name="simulated_llm")
    def _simulated_llm_fixture(request: pytest.FixtureRequest) -> Iterator[SimulatedLLM]:
        """A running simulator; configure it with `@pytest.mark.sim(profile=..., script=[...])`."""
        from qwed_guard.sim import SimulatedLLM

        marker = request.node.get_closest_marker("sim")
        with SimulatedLLM(**(marker.kwargs if marker else {})) as llm:
            yield llm

    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line("markers", "sim(**options): options for the simulated_llm fixture")

    @pytest.fixture(name="fake_clock")
    def _fake_clock_fixture() -> Iterator[FakeClock]:
        """Run the test in testing mode; the fixture's value is the fake clock."""
        with fake_time() as fake:
            yield fake

    @pytest.fixture(name="qwed_server_llm", scope="session")
    def _qwed_server_llm_fixture() -> Iterator[SimulatedLLM]:
        """The simulator `qwed_server` translates with (one per session, healthy profile)."""
        from qwed_guard.sim import SimulatedLLM

        with SimulatedLLM() as llm:
            yield llm

    @pytest.fixture(name="qwed_server", scope="session")
    def _qwed_server_fixture(qwed_server_llm: SimulatedLLM) -> Iterator[QwedApiServer]:
        """QWED's real API server on 127.0.0.1 for the session, translating with the simulator."""
        from qwed_guard.sim.qwed_api import QwedApiServer

        with QwedApiServer(llm_base_url=qwed_server_llm.base_url) as server:
            yield server

    @pytest.fixture(name="qwed_api_key")
    def _qwed_api_key_fixture(qwed_server: QwedApiServer) -> str:
        """A fresh API key of `qwed_server` for this test (its own rate-limit budget)."""
        return qwed_server.new_api_key()
