"""The Redis state store against real redis-server processes (see tests/services.py)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis", reason="the redis package (extra 'fleet') is not installed")

from loguru import logger  # noqa: E402

from qwed_guard.clock import FakeClock  # noqa: E402
from qwed_guard.state import State, StateStore, store_from_url  # noqa: E402
from qwed_guard.state.redis import DEFAULT_TTL, RedisStore  # noqa: E402

pytestmark = pytest.mark.services


def bump(state: State | None) -> tuple[State | None, int]:
    """Count one more; the decision is the count this update made."""
    count = (state or {}).get("count", 0) + 1
    return {"count": count}, count


def raw_client(url: str) -> Any:
    return redis.Redis.from_url(url)


@pytest.fixture
def logs() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(f"{m.record['level'].name} {m}"), level="INFO")
    yield messages
    logger.remove(sink)


# ---------------------------------------------------------------- the shared store


def test_json_values_under_the_namespace(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    assert isinstance(store, StateStore)
    assert store.update("alerts:fn", bump) == 1
    assert store.update("alerts:fn", bump) == 2
    assert store.get("alerts:fn") == {"count": 2}
    assert raw_client(redis_url).get(redis_prefix + "alerts:fn") == b'{"count":2}'
    assert store.keys() == ["alerts:fn"]

    other = RedisStore(redis_url, prefix=redis_prefix + "other:")
    assert other.get("alerts:fn") is None
    assert other.update("alerts:fn", bump) == 1
    assert store.get("alerts:fn") == {"count": 2}

    # None deletes the key.
    assert store.update("alerts:fn", lambda s: (None, "gone")) == "gone"
    assert store.get("alerts:fn") is None
    assert raw_client(redis_url).exists(redis_prefix + "alerts:fn") == 0


def test_keys_expire_after_their_last_write(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    store.update("k", bump)
    left = store.ttl_of("k")
    assert left is not None and DEFAULT_TTL - 60 < left <= DEFAULT_TTL

    store.update("k", bump, ttl=30)
    left = store.ttl_of("k")
    assert left is not None and 25 < left <= 30
    store.update("k", bump)  # the next write refreshes the default TTL
    left = store.ttl_of("k")
    assert left is not None and left > 30

    # A change that leaves the value as it was writes nothing, so the TTL stays.
    store.update("k", bump, ttl=30)
    store.update("k", lambda s: (s, None), ttl=9_999)
    left = store.ttl_of("k")
    assert left is not None and left <= 30

    never = RedisStore(redis_url, prefix=redis_prefix, ttl=None)
    never.update("forever", bump)
    assert never.ttl_of("forever") is None and never.get("forever") == {"count": 1}


def test_url_options_and_shared_instance(redis_url: str, redis_prefix: str) -> None:
    url = f"{redis_url}?prefix={redis_prefix}&ttl=120&probe_interval=2"
    store = store_from_url(url)
    assert isinstance(store, RedisStore)
    assert store_from_url(url) is store  # one pool and one degradation notice per URL
    assert (store.prefix, store.ttl, store.probe_interval) == (redis_prefix, 120.0, 2.0)
    assert store.update("k", bump) == 1
    assert raw_client(redis_url).get(redis_prefix + "k") == b'{"count":1}'
    left = store.ttl_of("k")
    assert left is not None and 110 < left <= 120


def test_bad_urls_name_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWED_GUARD_NO_SUCH_VAR", raising=False)
    with pytest.raises(ValueError, match="environment variable QWED_GUARD_NO_SUCH_VAR"):
        RedisStore("redis://:${QWED_GUARD_NO_SUCH_VAR}@127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="ttl must be a number"):
        RedisStore("redis://127.0.0.1:6379/0?ttl=soon")
    with pytest.raises(ValueError, match=r"supported: 'memory:', 'redis://\.\.\.'"):
        store_from_url("mongodb://127.0.0.1/")


def test_a_value_that_is_not_json_reads_as_empty(
    redis_url: str, redis_prefix: str, logs: list[str]
) -> None:
    raw_client(redis_url).set(redis_prefix + "k", b"not json")
    store = RedisStore(redis_url, prefix=redis_prefix)
    assert store.get("k") is None
    assert store.update("k", bump) == 1
    assert any("holds no JSON object" in line for line in logs)


# ---------------------------------------------------------------- many processes as one


def _hammer(url: str, prefix: str, updates: int, start: Any) -> list[int]:
    store = RedisStore(url, prefix=prefix)
    start.wait()
    return [store.update("counter", bump) for _ in range(updates)]


def test_updates_from_four_processes_are_atomic(redis_url: str, redis_prefix: str) -> None:
    processes, updates = 4, 250
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(processes)
        with context.Pool(processes) as pool:
            results = pool.starmap(_hammer, [(redis_url, redis_prefix, updates, start)] * processes)
    decisions = sorted(count for result in results for count in result)
    # Every update saw a distinct count: none lost, none applied twice.
    assert decisions == list(range(1, processes * updates + 1))
    assert RedisStore(redis_url, prefix=redis_prefix).get("counter") == {
        "count": processes * updates
    }


# ---------------------------------------------------------------- Redis going away


def test_redis_down_mid_run(redis_server: Any, fake_clock: FakeClock, logs: list[str]) -> None:
    degraded: list[str] = []
    recovered: list[str] = []
    store = RedisStore(
        redis_server.url,
        probe_interval=5,
        on_degraded=degraded.append,
        on_recovered=recovered.append,
    )
    assert [store.update("k", bump) for _ in range(3)] == [1, 2, 3]
    assert not store.degraded

    redis_server.stop()
    # The calls go on, in this process's memory (which starts afresh).
    assert [store.update("k", bump) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert store.get("k") == {"count": 5}
    assert store.degraded
    assert len(degraded) == 1 and redis_server.url.removesuffix("/0") in degraded[0]
    warnings = [line for line in logs if line.startswith("WARNING")]
    assert len(warnings) == 1 and "unreachable" in warnings[0]

    fake_clock.advance(5)  # a probe fails: still degraded, and nothing more is logged
    assert store.update("k", bump) == 6
    assert len(degraded) == 1 and len([x for x in logs if x.startswith("WARNING")]) == 1

    redis_server.start()
    assert store.update("k", bump) == 7  # Redis is back, but the next probe is not due yet
    assert store.degraded and raw_client(redis_server.url).dbsize() == 0

    fake_clock.advance(5)
    # Redis (restarted empty) is the shared state again.
    assert store.update("k", bump) == 1
    assert not store.degraded and recovered == [redis_server.url]
    assert raw_client(redis_server.url).get("qwed_guard:k") == b'{"count":1}'
    assert any(line.startswith("INFO") and "reachable again" in line for line in logs)
    assert len(degraded) == 1


def test_a_failing_listener_does_not_break_the_call(
    redis_server: Any, logs: list[str], fake_clock: FakeClock
) -> None:
    def broken(reason: str) -> None:
        raise RuntimeError("alert channel down")

    store = RedisStore(redis_server.url, on_degraded=broken)
    redis_server.stop()
    assert store.update("k", bump) == 1
    assert any("listener raised" in line for line in logs)


@pytest.mark.redis_args("--requirepass", "s3cret-pass-word")
def test_credentials_come_from_the_environment_and_stay_out_of_logs(
    redis_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    logs: list[str],
    fake_clock: FakeClock,
) -> None:
    host = redis_server.url.removeprefix("redis://")
    monkeypatch.setenv("QWED_GUARD_TEST_REDIS_PASSWORD", "s3cret-pass-word")
    store = RedisStore(f"redis://:${{QWED_GUARD_TEST_REDIS_PASSWORD}}@{host}")
    assert store.update("k", bump) == 1 and not store.degraded
    assert "s3cret" not in repr(store) and store.url == redis_server.url

    degraded: list[str] = []
    wrong = RedisStore(f"redis://:wrong-pass-word@{host}", on_degraded=degraded.append)
    assert wrong.update("k", bump) == 1  # authentication refused: the call goes on in memory
    assert wrong.degraded and len(degraded) == 1
    assert "wrong-pass-word" not in degraded[0] + repr(wrong) + "".join(logs)


def test_a_restart_between_calls_is_not_an_outage(redis_server: Any) -> None:
    degraded: list[str] = []
    store = RedisStore(redis_server.url, on_degraded=degraded.append)
    assert store.update("k", bump) == 1
    redis_server.stop()
    redis_server.start()  # empty again: nothing is saved
    assert store.update("k", bump) == 1
    assert not store.degraded and degraded == []


def test_guarded_calls_go_on_while_redis_is_down(
    redis_server: Any, fake_clock: FakeClock, logs: list[str]
) -> None:
    from types import SimpleNamespace

    from qwed_guard.alerts import alert_on_failures
    from qwed_guard.breaker import circuit_breaker

    # A URL of its own: stores are shared per URL within the process.
    state = f"{redis_server.url}?probe_interval=5&prefix=calls-go-on-{redis_server.port}:"
    answers = iter(range(1, 1_000))

    @alert_on_failures(threshold=3, notify=[], state=state)
    @circuit_breaker(failure_threshold=3, state=state)
    def verify() -> Any:
        return SimpleNamespace(verified=True, value=next(answers), error=None)

    assert [verify().value for _ in range(3)] == [1, 2, 3]
    assert verify.breaker.snapshot()["successes"] == 3  # counted in Redis
    redis_server.stop()
    assert [verify().value for _ in range(2)] == [4, 5]
    assert verify.breaker.snapshot()["successes"] == 2  # counted in memory meanwhile
    # One store per URL in a process: one warning for both layers.
    assert len([line for line in logs if "unreachable" in line]) == 1
    redis_server.start()
    fake_clock.advance(5)
    assert verify().value == 6
    assert verify.breaker.snapshot()["successes"] == 1  # Redis again (restarted empty)
