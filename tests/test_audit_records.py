"""@audited: which records each outcome path writes, their fields, context, query and redaction."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from qwed_guard import AuditError, VerificationFailed, audit_context, fallback, retry
from qwed_guard.audit import MemorySink, audited, canonical, verify_trail
from qwed_guard.audit.record import GENESIS, jsonable, record_hash, rfc3339
from qwed_guard.audit.record import scrub as fast_scrub
from qwed_guard.context import current
from qwed_guard.errors import ParameterError
from qwed_guard.layer import CallOutcome, Layer, guard, outcome_of
from qwed_guard.outcomes import register_secret, scrub
from qwed_guard.redact import _HEADER_WORDS, _SECRET_PATTERNS
from tests.trails import attempts_of


@dataclass
class Result:
    """Shaped like qwed_sdk's VerificationResult."""

    verified: bool
    value: Any = None
    confidence: float = 0.0
    error: str | None = None


OK = Result(True, 1102.5, 1.0)
OUTAGE = Result(False, error="LLM call failed: Error code: 503 - Service Unavailable")
BAD_KEY = Result(
    False, error="LLM call failed: Error code: 401 - Incorrect API key sk-abcd1234efgh"
)


def scripted(*replies: Result | Exception) -> Any:
    queue = list(replies)

    def reply() -> Result:
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return reply


def by_event(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == event]


def build(sink: MemorySink, replies: Any, *, use_fallback: bool = True) -> Any:
    def ask(query: str) -> Result:
        return replies()

    fn: Any = retry(max_tries=3, jitter=None)(ask)
    if use_fallback:
        fn = fallback(value=100.0)(fn)
    return audited(sink=sink)(fn)


def build_async(sink: MemorySink, replies: Any, *, use_fallback: bool = True) -> Any:
    async def ask(query: str) -> Result:
        await asyncio.sleep(0)
        return replies()

    fn: Any = retry(max_tries=3, jitter=None)(ask)
    if use_fallback:
        fn = fallback(value=100.0)(fn)
    return audited(sink=sink)(fn)


PATHS = {
    "verified_first_try": ((OK,), True),
    "retried_then_verified": ((OUTAGE, OUTAGE, OK), True),
    "fallback": ((OUTAGE, OUTAGE, OUTAGE), True),
    "raised": ((OUTAGE, BAD_KEY), False),
}


def check_path(name: str, records: list[dict[str, Any]], result: Any, raised: Any) -> None:
    attempts, calls = attempts_of(records), by_event(records, "call")
    separate = by_event(records, "attempt")
    assert len(calls) == 1
    call = calls[0]
    assert {r["call_id"] for r in records} == {call["call_id"]}
    assert [r["attempt"] for r in attempts] == list(range(1, len(attempts) + 1))
    assert records[-1] is call  # failed attempts are written before the call record
    assert all(r["v"] == 2 for r in records)
    if name in ("verified_first_try", "retried_then_verified"):
        # The answered attempt is inline in the call record, not a record of its own.
        assert separate == attempts[:-1] and attempts[-1]["inline"] is True
        assert len(records) == len(attempts)
        assert set(call["answered"]) == {
            "attempt",
            "outcome",
            "verified",
            "value",
            "confidence",
            "error",
            "status",
            "duration_us",
            "wait_us",
        }
        assert call["answered"]["value"] == call["value"] == "1102.5"
        assert call["answered"]["verified"] is True and call["answered"]["error"] is None
    else:
        assert call["answered"] is None and separate == attempts
        assert len(records) == len(attempts) + 1
    assert all(r["query"] == "What is 5% of 22050?" for r in records)
    assert call["attempt"] == len(attempts)
    if name == "verified_first_try":
        assert [a["outcome"] for a in attempts] == ["verified"]
        assert call["outcome"] == "verified" and call["source"] == "verified"
        assert (
            call["verified"] is True and call["value"] == "1102.5" and call["confidence"] == "1.0"
        )
        assert attempts[0]["wait_us"] == 0
    elif name == "retried_then_verified":
        assert [a["outcome"] for a in attempts] == ["transient", "transient", "verified"]
        assert [a["wait_us"] for a in attempts] == [0, 1_000_000, 2_000_000]
        assert call["source"] == "verified" and call["verified"] is True
        assert call["duration_us"] == 3_000_000  # the fake clock's waits
        assert "503" in attempts[0]["error"]
    elif name == "fallback":
        assert [a["outcome"] for a in attempts] == ["transient"] * 3
        assert call["source"] == "fallback" and call["verified"] is False
        assert call["value"] == "100.0" and call["outcome"] == "transient"
        assert "max_tries=3" in call["reason"] or "503" in call["reason"]
        assert [e["event"] for e in call["events"]] == ["fallback_used"]
        assert result.source == "fallback"
    else:
        assert isinstance(raised, VerificationFailed)
        assert [a["outcome"] for a in attempts] == ["transient", "permanent"]
        assert call["source"] is None and call["exception"] == "VerificationFailed"
        assert call["outcome"] == "permanent" and call["verified"] is False
        assert "permanent outcomes are not retried" in call["reason"]
        assert "sk-abcd1234efgh" not in orjson.dumps(records).decode()
    for record in records:
        for key in ("v", "id", "ts", "function", "context", "qwed", "qwed_guard", "duration_us"):
            assert key in record
        assert record["ts"].endswith("Z") and record["function"].endswith("ask")
        assert not any(isinstance(v, float) for v in record.values())
    assert not any(isinstance(v, float) for v in (call["answered"] or {}).values())


@pytest.mark.parametrize("name", list(PATHS))
def test_every_outcome_path_writes_attempts_and_a_call_sync(name: str, fake_clock: Any) -> None:
    replies, use_fallback = PATHS[name]
    sink = MemorySink()
    fn = build(sink, scripted(*replies), use_fallback=use_fallback)
    result = raised = None
    try:
        result = fn("What is 5% of 22050?")
    except VerificationFailed as exc:
        raised = exc
    check_path(name, sink.records, result, raised)


@pytest.mark.parametrize("name", list(PATHS))
async def test_every_outcome_path_writes_attempts_and_a_call_async(
    name: str, fake_clock: Any
) -> None:
    replies, use_fallback = PATHS[name]
    sink = MemorySink()
    fn = build_async(sink, scripted(*replies), use_fallback=use_fallback)
    result = raised = None
    try:
        result = await fn("What is 5% of 22050?")
    except VerificationFailed as exc:
        raised = exc
    check_path(name, sink.records, result, raised)


async def test_concurrent_async_calls_keep_their_records_apart(fake_clock: Any) -> None:
    sink = MemorySink()

    @audited(sink=sink)
    @retry(max_tries=2, jitter=None)
    async def ask(query: str) -> Result:
        await asyncio.sleep(0)
        return OK if current() is not None and current().attempt == 2 else OUTAGE  # type: ignore[union-attr]

    await asyncio.gather(*(ask(f"q{i}") for i in range(10)))
    calls = by_event(sink.records, "call")
    assert len(calls) == 10 and len({c["call_id"] for c in calls}) == 10
    for call in calls:
        mine = [r for r in sink.records if r["call_id"] == call["call_id"]]
        assert {r["query"] for r in mine} == {call["query"]}
        assert [r["event"] for r in mine] == ["attempt", "call"]  # the verified one inline
        assert [a["outcome"] for a in attempts_of(mine)] == ["transient", "verified"]
        assert [a["attempt"] for a in attempts_of(mine)] == [1, 2]


def test_records_form_a_verifiable_chain(tmp_path: Any) -> None:
    sink = MemorySink()
    fn = build(sink, scripted(OUTAGE, OK, OK))
    fn("What is 5% of 22050?")
    fn("What is 5% of 22050?")
    records = sink.records
    # outage + verified (inline in its call record), then verified at once: 3 records
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert [r["event"] for r in records] == ["attempt", "call", "call"]
    assert [a["outcome"] for a in attempts_of(records)] == ["transient", "verified", "verified"]
    assert records[0]["prev_hash"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
    assert all(record_hash(r) == r["hash"] for r in records)
    trail = tmp_path / "copy.jsonl"
    trail.write_bytes(b"".join(sink.lines()))
    assert verify_trail(str(trail)).ok


def test_context_from_audit_context_and_decorator(fake_clock: Any) -> None:
    sink = MemorySink()

    @audited(sink=sink, context={"app": "billing", "user_id": "default"})
    def ask(query: str) -> Result:
        return OK

    with audit_context(user_id="u-42", session_id="s-1"):
        ask("What is 2 + 2?")
    ask("What is 3 + 3?")
    first, second = by_event(sink.records, "call")
    assert first["context"] == {"app": "billing", "user_id": "u-42", "session_id": "s-1"}
    assert second["context"] == {"app": "billing", "user_id": "default"}


def test_query_is_inferred_and_settable() -> None:
    sink = MemorySink()

    @audited(sink=sink)
    def named(limit: int, query: str) -> Result:
        return OK

    @audited(sink=sink)
    def first_str(n: int, text: str, other: str) -> Result:
        return OK

    @audited(sink=sink, query_arg="prompt")
    def chosen(system: str, prompt: str) -> Result:
        return OK

    class Asker:
        @audited(sink=sink)
        def ask(self, query: str) -> Result:
            return OK

    named(3, "by name")
    named(3, query="by keyword")
    first_str(1, "the first string", "not this")
    chosen("be terse", prompt="the prompt")
    chosen("be terse", "positional prompt")
    Asker().ask("from a method")
    queries = [r["query"] for r in by_event(sink.records, "call")]
    assert queries == [
        "by name",
        "by keyword",
        "the first string",
        "the prompt",
        "positional prompt",
        "from a method",
    ]


CANARY_PII = "Jane Canary-Doe 4711"
CANARY_SECRET = "sk-canary0123456789abcdef"


def test_hmac_redaction_keeps_pii_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AUDIT_REDACT_KEY", "k" * 32)
    path = tmp_path / "audit.jsonl"

    @audited(
        sink=f"jsonl:{path}",
        redact="hmac",
        redact_key_env="AUDIT_REDACT_KEY",
        redact_context=["patient"],
    )
    def ask(query: str) -> Result:
        return OK

    with audit_context(patient=CANARY_PII, ward="B"):
        ask(f"Dose for {CANARY_PII} using key {CANARY_SECRET}?")
        ask(f"Dose for {CANARY_PII} using key {CANARY_SECRET}?")
    text = path.read_text()
    assert CANARY_PII not in text and "Canary-Doe" not in text and CANARY_SECRET not in text
    calls = [orjson.loads(line) for line in text.splitlines() if '"event":"call"' in line]
    assert calls[0]["query"].startswith("hmac-sha256:")
    assert calls[0]["query"] == calls[1]["query"]  # equal inputs stay linkable
    assert calls[0]["context"]["patient"].startswith("hmac-sha256:")
    assert calls[0]["context"]["ward"] == "B"  # not chosen for redaction


def test_hmac_redaction_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ParameterError, match="redact_key_env: environment variable NO_SUCH_KEY"):
        audited(sink="memory:", redact="hmac", redact_key_env="NO_SUCH_KEY")
    with pytest.raises(ParameterError, match="redact_key_env"):
        audited(sink="memory:", redact="hmac")
    with pytest.raises(ParameterError, match="redact: must be"):
        audited(sink="memory:", redact="mask")  # type: ignore[call-overload]


def test_callable_redaction_and_secrets_scrubbed_everywhere() -> None:
    sink = MemorySink()
    register_secret("hunter2-routing")

    def drop_value(record: dict[str, Any]) -> dict[str, Any]:
        record["value"] = None
        return record

    @audited(sink=sink, redact=drop_value, context={"token": "Bearer abc.def.ghi"})
    def ask(query: str) -> Result:
        return Result(True, "42", 1.0)

    ask("call https://user:pw@example.com with hunter2-routing")
    dumped = orjson.dumps(sink.records).decode()
    for secret in ("abc.def.ghi", "user:pw", "hunter2-routing"):
        assert secret not in dumped
    assert all(r["value"] is None for r in sink.records)


def test_fast_scrub_prefilter_covers_every_scrub_pattern() -> None:
    # record.scrub skips redact.scrub for text that cannot match; each pattern must need
    # one of the substrings the prefilter looks for, or a secret could slip through.
    triggers = ("sk-", "://", "=", *_HEADER_WORDS)
    for pattern, _ in _SECRET_PATTERNS:
        source = pattern.pattern.lower().replace("\\", "")
        assert any(t in source for t in triggers), pattern.pattern
    samples = [
        "key sk-abcdef123456",
        "Authorization: Bearer abc.def",
        "https://u:p@host/x",
        "https://hooks.slack.com/services/T0/B0/XXXX",
        "https://example.com/webhooks/abc123",
        "https://x.io/?token=abc",
        'routing_key: "R0UT1NG"',
        "x-api-key: K3Y-VALUE",
        "host=db password=hunter2",
        "plain text",
    ]
    for text in samples:
        assert fast_scrub(text) == scrub(text)


def test_sink_failure_fails_closed_unless_on_error_log(fake_clock: Any) -> None:
    class Broken:
        def append(self, records: Any) -> None:
            raise OSError(28, "No space left on device")

        def flush(self) -> None: ...

        def close(self) -> None: ...

    calls = []

    def ask(query: str) -> Result:
        calls.append(query)
        return OK

    strict = audited(sink=Broken())(fallback(value=0)(retry(max_tries=2)(ask)))
    with pytest.raises(AuditError, match="No space left on device"):
        strict("q")
    lenient = audited(sink=Broken(), on_error="log")(ask)
    assert lenient("q") is OK
    assert calls == ["q", "q"]


def test_float_free_records_and_big_ints() -> None:
    assert jsonable({"a": 0.1, "b": [1.5, 2**60], "c": float("nan")}) == {
        "a": "0.1",
        "b": ["1.5", str(2**60)],
        "c": "nan",
    }
    assert rfc3339(1_767_225_600.25) == "2026-01-01T00:00:00.250000Z"


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(),
)
ascii_key = st.text(alphabet=st.characters(max_codepoint=127), max_size=12)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ascii_key, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(ascii_key, json_value, max_size=8))
def test_fast_canonical_form_equals_rfc8785(record: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps(record)
    except UnicodeEncodeError:  # lone surrogates: neither encoder takes them
        return
    assert canonical(record) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=6), st.one_of(st.floats(allow_nan=False), st.text()), max_size=5
    )
)
def test_other_records_use_rfc8785(record: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps(record)
    except (UnicodeEncodeError, rfc8785.CanonicalizationError):
        return
    assert canonical(record) == expected


any_key_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), any_key_value, max_size=4), st.text(max_size=8))
def test_a_record_with_non_ascii_text_or_keys_keeps_the_rfc8785_form(
    context: dict[str, Any], query: str
) -> None:
    # A built record: ASCII keys of its own, any text (a query in €, π), a user's context
    # whose keys may be anything. The fast path must give RFC 8785's bytes for all of them.
    from qwed_guard.audit.record import Record

    record = Record({"v": 1, "query": query, "context": context, "events": [context]})
    try:
        expected = rfc8785.dumps(dict(record))
    except (UnicodeEncodeError, rfc8785.CanonicalizationError):
        return
    assert canonical(record) == expected


class Spoils(Layer):
    """Turns the first answer that reaches it into a timeout: the call is tried again."""

    kind = "spoils"

    def __init__(self) -> None:
        self.spoiled = 0

    def exit(self, ctx: Any, state: Any, outcome: CallOutcome) -> CallOutcome:
        if self.spoiled == 0:
            self.spoiled += 1
            return outcome_of(TimeoutError("the answer came too late"))
        return outcome


def test_an_answered_attempt_followed_by_another_keeps_its_own_record(fake_clock: Any) -> None:
    sink = MemorySink()

    def ask(query: str) -> Result:
        return OK

    spoiled = audited(sink=sink)(retry(max_tries=3, jitter=None)(guard(ask, Spoils())))
    spoiled("What is 5% of $1050?")
    sink.flush()
    records = [dict(r) for r in sink.records]
    attempts = attempts_of(records)
    # Attempt 1 answered, then was spoiled and retried: it is its own record, attempt 2 inline.
    assert [(a["attempt"], a["outcome"], a.get("inline", False)) for a in attempts] == [
        (1, "verified", False),
        (2, "verified", True),
    ]
    assert [r["event"] for r in records] == ["attempt", "call"]
    assert records[1]["attempt"] == 2 and records[1]["outcome"] == "verified"
    assert fake_clock.waits == [1.0]  # the spoiled answer was retried after retry's first wait
