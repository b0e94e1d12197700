"""Fault decisions: validation, reproducibility, rates, scripts, outages on a fake clock."""

from __future__ import annotations

import os

os.environ.setdefault("QWED_QUIET", "1")

from collections import Counter
from collections.abc import Iterator

import pytest

from qwed_guard import clock
from qwed_guard.sim import PROFILES, FaultConfig, Reply, SimulatedLLM
from qwed_guard.sim.faults import FaultPlan, as_reply, parse_script
from qwed_guard.testing import fake_time


@pytest.fixture
def fake_clock() -> Iterator[clock.FakeClock]:
    fake = clock.FakeClock()
    previous = clock.install(fake)
    try:
        yield fake
    finally:
        clock.install(previous)


def keys(plan: FaultPlan, n: int, prompt: str = "answer") -> list[str]:
    return [plan.decide(prompt).reply.stat_key for _ in range(n)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "nope"}, "unknown profile 'nope'; choose one of: healthy, flaky, outage"),
        ({"error_5xx": 1.5}, "error_5xx must be a rate in [0, 1], got 1.5"),
        ({"wrong_answer": -0.1}, "wrong_answer must be a rate in [0, 1], got -0.1"),
        ({"quota": float("nan")}, "quota must be a rate in [0, 1], got nan"),
        ({"hang": True}, "hang must be a rate in [0, 1], got True"),
        ({"malformed": "0.5"}, "malformed must be a rate in [0, 1], got '0.5'"),
        ({"latency": -1}, "latency must be >= 0 seconds, got -1"),
        ({"jitter": float("inf")}, "jitter must be >= 0 seconds, got inf"),
        ({"outage_after": -2.0}, "outage_after must be >= 0 seconds, got -2.0"),
        ({"outage_after_requests": 1.5}, "outage_after_requests must be an integer >= 0"),
        ({"error_rate": 0.1}, "unknown simulator option 'error_rate'"),
        ({"port": 70000}, "port must be an integer in 0-65535, got 70000"),
        ({"script": ["ok", "teapot"]}, "unknown script item 'teapot'"),
        ({"script": [Reply.ok(), 999]}, "an error status must be 400-599, got 999"),
    ],
)
def test_bad_input_is_one_clear_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        SimulatedLLM(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_profiles_and_overrides() -> None:
    assert PROFILES == ("healthy", "flaky", "outage")
    flaky = FaultConfig.build("flaky")
    assert (flaky.error_5xx, flaky.rate_limit, flaky.wrong_answer) == (0.2, 0.05, 0.1)
    custom = FaultConfig.build("flaky", error_5xx=0.5, latency=0.01)
    assert (custom.error_5xx, custom.rate_limit, custom.latency) == (0.5, 0.05, 0.01)
    outage = FaultConfig.build("outage")
    assert outage.outage_seconds == 10.0 and outage.outage_after == 2.0
    assert outage.error_5xx == 0.2
    assert FaultConfig.build("healthy") == FaultConfig()


def test_script_items() -> None:
    assert parse_script(
        ["ok", "503", "429", "quota", "401", "wrong", "unevaluable", "malformed"]
    ) == (
        Reply.ok(),
        Reply.error(503),
        Reply.rate_limited(),
        Reply.quota(),
        Reply.unauthorized(),
        Reply.wrong_answer(),
        Reply.unevaluable(),
        Reply.malformed(),
    )
    assert as_reply(502) == Reply.error(502)
    assert as_reply(429) == Reply.rate_limited()
    assert as_reply("200") == Reply.ok()
    assert Reply.error(401) == Reply.unauthorized()
    assert Reply.error(500).stat_key == "error_500"
    assert Reply.rate_limited(retry_after=2.0).seconds == 2.0
    assert Reply.hang(0.5).seconds == 0.5
    with pytest.raises(ValueError):
        Reply.hang(-1)
    with pytest.raises(ValueError):
        Reply.rate_limited(retry_after=-1)
    with pytest.raises(ValueError):
        as_reply(True)


def test_one_seed_one_sequence() -> None:
    config = FaultConfig.build("flaky", malformed=0.05, unevaluable=0.2, jitter=0.3)

    def run(seed: int) -> list[tuple[str, float]]:
        plan = FaultPlan(config, seed)
        prompts = ["answer", "expression"] * 100
        return [(d.reply.stat_key, d.delay) for d in (plan.decide(p) for p in prompts)]  # type: ignore[arg-type]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_script_does_not_shift_what_follows() -> None:
    config = FaultConfig.build("flaky")
    plain = keys(FaultPlan(config, 3), 50)
    scripted = keys(FaultPlan(config, 3, parse_script(["quota", "quota", "quota"])), 50)
    assert scripted[:3] == ["quota"] * 3
    assert scripted[3:] == plain[3:]


def test_flaky_rates_are_roughly_as_documented() -> None:
    plan = FaultPlan(FaultConfig.build("flaky"), 11)
    n = 8000
    counts = Counter(keys(plan, n))
    fivexx = sum(counts[f"error_{s}"] for s in (500, 502, 503))
    assert abs(fivexx / n - 0.20) < 0.02
    assert abs(counts["rate_limit"] / n - 0.05) < 0.01
    # wrong answers are drawn only when no HTTP fault was: 0.75 * 0.10
    assert abs(counts["wrong_answer"] / n - 0.075) < 0.012
    assert min(counts[f"error_{s}"] for s in (500, 502, 503)) > 0.05 * n
    assert counts["ok"] + fivexx + counts["rate_limit"] + counts["wrong_answer"] == n


def test_content_faults_only_on_their_prompt() -> None:
    wrong = FaultPlan(FaultConfig.build(wrong_answer=1.0))
    assert set(keys(wrong, 20, "answer")) == {"wrong_answer"}
    assert set(keys(wrong, 20, "expression")) == {"ok"}
    assert set(keys(wrong, 20, "other")) == {"ok"}
    uneval = FaultPlan(FaultConfig.build(unevaluable=1.0))
    assert set(keys(uneval, 20, "expression")) == {"unevaluable"}
    assert set(keys(uneval, 20, "answer")) == {"ok"}


@pytest.mark.parametrize(
    ("rate", "key"),
    [
        ("unauthorized", "unauthorized"),
        ("quota", "quota"),
        ("rate_limit", "rate_limit"),
        ("malformed", "malformed"),
        ("hang", "hang"),
    ],
)
def test_rate_one_always_faults(rate: str, key: str) -> None:
    plan = FaultPlan(FaultConfig.build("healthy", **{rate: 1.0}))
    assert set(keys(plan, 30, "expression")) == {key}


def test_latency_is_fixed_plus_jitter() -> None:
    plan = FaultPlan(FaultConfig.build(latency=0.1, jitter=0.05), 1)
    delays = [plan.decide("answer").delay for _ in range(200)]
    assert all(0.1 <= d <= 0.15 for d in delays)
    assert max(delays) - min(delays) > 0.03


def test_outage_now_heals_on_the_clock(fake_clock: clock.FakeClock) -> None:
    plan = FaultPlan(FaultConfig.build(), 0)
    plan.outage(10.0)
    assert plan.in_outage()
    assert keys(plan, 3) == ["outage"] * 3
    fake_clock.advance(9.9)
    assert keys(plan, 1) == ["outage"]
    fake_clock.advance(0.1)
    assert not plan.in_outage()
    assert keys(plan, 3) == ["ok"] * 3


def test_outage_after_seconds_from_start(fake_clock: clock.FakeClock) -> None:
    plan = FaultPlan(FaultConfig.build(outage_after=2.0, outage_seconds=5.0), 0)
    assert keys(plan, 2) == ["ok", "ok"]
    fake_clock.advance(2.0)
    assert keys(plan, 2) == ["outage", "outage"]
    fake_clock.advance(5.0)
    assert keys(plan, 2) == ["ok", "ok"]
    plan.restart()  # a restart schedules the profile's outage afresh, never twice
    fake_clock.advance(2.0)
    assert keys(plan, 1) == ["outage"]
    fake_clock.advance(5.0)
    assert keys(plan, 1) == ["ok"]


def test_outage_after_requests(fake_clock: clock.FakeClock) -> None:
    plan = FaultPlan(FaultConfig.build(outage_after_requests=3, outage_seconds=1.0), 0)
    assert keys(plan, 5) == ["ok", "ok", "ok", "outage", "outage"]
    fake_clock.advance(1.0)
    assert keys(plan, 5) == ["ok"] * 5  # only once


def test_script_wins_over_an_outage(fake_clock: clock.FakeClock) -> None:
    plan = FaultPlan(FaultConfig.build(), 0, parse_script(["ok"]))
    plan.outage(1.0)
    assert keys(plan, 2) == ["ok", "outage"]


def test_outage_profile_opens_after_two_seconds(fake_clock: clock.FakeClock) -> None:
    llm = SimulatedLLM("outage", seed=1)
    llm.start()
    try:
        assert not llm.in_outage
        fake_clock.advance(2.0)
        assert llm.in_outage
        fake_clock.advance(10.0)
        assert not llm.in_outage
    finally:
        llm.stop()
    with pytest.raises(ValueError):
        llm.outage(-1.0)


def test_end_outage_heals_now_but_keeps_later_windows() -> None:
    with fake_time() as fake:
        plan = FaultPlan(FaultConfig.build("healthy"), 0, ())
        plan.outage(60)
        plan.outage(5, start_in=100)
        assert plan.in_outage()
        plan.end_outage()
        assert not plan.in_outage()
        fake.advance(101)
        assert plan.in_outage()
