"""The audit writer's bytes over many varied calls: every line is the RFC 8785 form of its record
(the general encoder, not the fast path), the chain verifies, and no secret reaches the trail.

`write_trails` can also be run under another tree (PYTHONPATH) to compare its files byte for byte.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import rfc8785

from qwed_guard import alert_on_failures, audit_context, fallback, retry
from qwed_guard.audit import audited, verify_trail
from qwed_guard.audit.key import Key
from qwed_guard.clock import FakeClock, install
from qwed_guard.errors import AuditError
from qwed_guard.redact import register_secret

API_KEY = "sk-" + "Zq9" * 13 + "x"  # "sk-" and 40 characters
REGISTERED = "canary-registered-4f1d9a"
KEY_ENV = "WRITER_BYTES_KEY"
REDACT_ENV = "WRITER_BYTES_REDACT_KEY"


@dataclass
class Result:
    """Shaped like qwed_sdk's VerificationResult."""

    verified: bool
    value: Any = None
    confidence: Any = 0.0
    error: str | None = None
    attestation: str | None = None


def _text(rng: random.Random) -> str:
    pieces = [
        "What is 15% of 200?",
        "Dosis für Müller ☃ 東京",
        "lone \ud800 surrogate",
        f"key {API_KEY} here",
        f"uses {REGISTERED}",
        "Bearer abcdefgh.ijkl",
        "x" * rng.randint(0, 300),
        "",
        "q",
    ]
    return " ".join(rng.sample(pieces, rng.randint(1, 3)))


def _reply(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return Result(True, rng.choice([30.0, 1e300, -0.0, 7, "42", None]), rng.random())
    if kind == 1:
        return Result(False, error=f"LLM call failed: 503 {_text(rng)}")
    if kind == 2:
        return RuntimeError(f"boom {_text(rng)}")
    if kind == 3:
        return rng.choice([42, "plain ☃", {"k": [1, 2.5, None], "e": True}, [1, "two"]])
    if kind == 4:
        return Result(True, {"nested": _text(rng)}, 1.0, attestation="eyJ.att.sig")
    if kind == 5:
        # Past JSON's safe integers, and a non-ASCII key beside a lone surrogate (the RFC 8785
        # path): both once failed the write.
        return rng.choice(
            [Result(True, 2**40, "high"), Result(True, -(2**70)), Result(True, {"ключ": "\udc80"})]
        )
    return Result(False, error=None)


def _stack(rng: random.Random, sink: str, options: dict[str, Any]) -> Any:
    replies: list[Any] = []

    def ask(query: Any) -> Any:
        item = replies.pop(0) if replies else Result(True, 1.0, 1.0)
        if isinstance(item, BaseException):
            raise item
        return item

    fn: Any = retry(max_tries=3, jitter=None)(ask)
    if rng.random() < 0.5:
        fn = alert_on_failures(threshold=2)(fn)
    if rng.random() < 0.7:
        fn = fallback(value=rng.choice([0.0, "none", None]))(fn)
    guarded = audited(sink=sink, **options)(fn)
    return guarded, replies


def _redactor(record: dict[str, Any]) -> dict[str, Any]:
    record["value"] = None
    return record


SHAPES: dict[str, dict[str, Any]] = {
    "batch": {"fsync": "batch"},
    "always": {"fsync": "always"},
    "keyed": {"fsync": "batch", "key_env": KEY_ENV, "checkpoint_every": 7},
    "hmac": {"redact": "hmac", "redact_key_env": REDACT_ENV},
    "redactor": {"redact": _redactor, "context": {"team": "a", "note": API_KEY}},
}


def write_trails(directory: Path, seed: int = 1, calls: int = 120) -> dict[str, Path]:
    """Run varied calls through each shape of audited stack; return each shape's trail."""
    register_secret(REGISTERED)
    previous = install(FakeClock())
    trails: dict[str, Path] = {}
    try:
        for name, options in SHAPES.items():
            rng = random.Random(f"{seed}-{name}")
            path = directory / f"{name}.jsonl"
            guarded, replies = _stack(rng, f"jsonl:{path}", options)
            for _ in range(calls):
                replies[:] = [_reply(rng) for _ in range(rng.randint(1, 3))]
                query: Any = _text(rng) if rng.random() < 0.8 else {"q": _text(rng), "n": 3}
                fields = {"user": _text(rng), "n": rng.randint(-5, 2**60)}
                try:
                    if rng.random() < 0.5:
                        with audit_context(**fields):
                            guarded(query)
                    else:
                        guarded(query)
                except AuditError:
                    raise  # every call must be recorded: the trail never refuses a shape
                except Exception:
                    pass  # a call that gave up: recorded all the same
            guarded.find_layer("audited").sink.close()
            trails[name] = path
    finally:
        install(previous)
    return trails


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "s" * 32)
    monkeypatch.setenv(REDACT_ENV, "r" * 32)


@pytest.mark.parametrize("seed", range(3))
def test_every_line_is_the_rfc8785_form_and_the_chain_verifies(
    tmp_path: Path, keys: None, seed: int
) -> None:
    for name, path in write_trails(tmp_path, seed).items():
        lines = path.read_bytes().splitlines()
        assert len(lines) >= 120, name
        for line in lines:
            record = orjson.loads(line)
            body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
            tail = [b'"hash":"' + record["hash"].encode() + b'"']
            if "sig" in record:
                tail.append(b'"sig":"' + record["sig"].encode() + b'"')
            # The line is the canonical body with hash (and sig) appended.
            assert line == rfc8785.dumps(body)[:-1] + b"," + b",".join(tail) + b"}", name
        key = Key(b"s" * 32) if name == "keyed" else None
        report = verify_trail(str(path), key=key)
        assert report.ok and report.records == len(lines), (name, report.summary())


def test_canary_secrets_never_reach_the_trail(tmp_path: Path, keys: None) -> None:
    register_secret(REGISTERED)
    path = tmp_path / "canary.jsonl"
    replies: list[Any] = []

    def ask(query: str) -> Any:
        item = replies.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    fn = audited(sink=f"jsonl:{path}", fsync="batch", context={"deploy": REGISTERED})(
        fallback(value=0.0)(alert_on_failures(threshold=1)(retry(max_tries=2, jitter=None)(ask)))
    )
    previous = install(FakeClock())
    try:
        for secret in (API_KEY, REGISTERED):
            replies[:] = [Result(False, error=f"401 {secret}"), RuntimeError(f"down {secret}")]
            with audit_context(user=secret, note=f"see {secret}"):
                fn(f"query with {secret}")
            replies[:] = [Result(True, f"value {secret}", 1.0)]
            fn(f"again {secret}")
    finally:
        install(previous)
    fn.find_layer("audited").sink.close()
    text = path.read_bytes().decode("utf-8")
    assert '"event":"call"' in text and '"events":[{' in text  # events and reasons written
    for secret in (API_KEY, REGISTERED, API_KEY[3:]):
        assert secret not in text


def test_integers_past_json_safe_range_are_recorded_as_decimal_text(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    big = 2**60 + 1  # a float would read it back as 2**60

    @audited(sink=f"jsonl:{path}", fsync="always")
    @fallback(value=0)
    def ask(query: str) -> Result:
        return Result(True, big, 1.0)

    assert ask("q").value == big
    record = orjson.loads(path.read_bytes().splitlines()[-1])
    assert record["value"] == record["answered"]["value"] == str(big)
    assert verify_trail(str(path)).ok
