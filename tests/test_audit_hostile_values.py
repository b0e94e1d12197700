"""Values that fight back: a result, query or context whose `str`/`repr`/`items` raise, a
property that raises when the trail reads it. Every call is either recorded or fails closed
with `AuditError`; none returns with its record silently lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from loguru import logger

from qwed_guard import audit_context, audited, fallback, retry
from qwed_guard.audit import verify_trail
from qwed_guard.audit.layer import _QueryLocator
from qwed_guard.errors import AuditError

CANARY = "sk-" + "H0st1le" * 6  # an API-key-shaped canary: must never be written


class Unprintable:
    """`str` and `repr` raise (with a secret in the message, which must not be written)."""

    def __str__(self) -> str:
        raise RuntimeError(f"no str {CANARY}")

    def __repr__(self) -> str:
        raise RuntimeError(f"no repr {CANARY}")


class Unlistable(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("no items")


class Answer:
    """Shaped like QWEDLocal's VerificationResult."""

    def __init__(self, value: Any) -> None:
        self.verified = True
        self.value = value
        self.confidence = 1.0


class BrokenAttestation(Answer):
    @property
    def attestation(self) -> str:
        raise RuntimeError(f"attestation property broke {CANARY}")


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(
    "value, written",
    [
        (Unprintable(), "<Unprintable: unreadable, RuntimeError>"),
        (Unlistable(a=1), "<Unlistable: unreadable, RuntimeError>"),
        ([1, Unprintable()], [1, "<Unprintable: unreadable, RuntimeError>"]),
        ({"k": Unprintable()}, {"k": "<Unprintable: unreadable, RuntimeError>"}),
    ],
)
def test_an_unreadable_value_is_recorded_as_what_it_is(
    tmp_path: Path, value: Any, written: Any
) -> None:
    path = tmp_path / "trail.jsonl"

    @audited(sink=f"jsonl:{path}", fsync="always")
    @fallback(value=0)
    @retry(max_tries=2)
    def ask(query: str) -> Answer:
        return Answer(value)

    assert ask("q").verified is True
    (call,) = records(path)
    assert call["value"] == call["answered"]["value"] == written
    assert verify_trail(str(path)).ok
    assert CANARY not in path.read_text()


def test_an_unreadable_query_and_context_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"

    @audited(sink=f"jsonl:{path}", fsync="always")
    def ask(query: Any) -> Answer:
        return Answer(1)

    with audit_context(user=Unprintable()):
        ask(Unprintable())
    (call,) = records(path)
    assert call["query"] == "<Unprintable: unreadable, RuntimeError>"
    assert call["context"] == {"user": "<Unprintable: unreadable, RuntimeError>"}
    assert verify_trail(str(path)).ok
    assert CANARY not in path.read_text()


@pytest.mark.parametrize("stacked", [False, True])
def test_a_watcher_error_mid_call_fails_the_call_closed(tmp_path: Path, stacked: bool) -> None:
    path = tmp_path / "trail.jsonl"

    def ask(query: str) -> Answer:
        return BrokenAttestation(1)

    fn: Any = fallback(value=0)(retry(max_tries=2)(ask)) if stacked else ask
    guarded = audited(sink=f"jsonl:{path}", fsync="always")(fn)
    with pytest.raises(AuditError, match="not audited: RuntimeError: attestation property broke"):
        guarded("q")
    try:
        guarded("q")
    except AuditError as exc:
        assert CANARY not in str(exc)  # the error says why, without the secret it held


def test_a_watcher_error_mid_call_fails_an_async_call_closed(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"

    @audited(sink=f"jsonl:{path}", fsync="always")
    async def ask(query: str) -> Answer:
        return BrokenAttestation(1)

    with pytest.raises(AuditError, match="attestation property broke"):
        asyncio.run(ask("q"))


def broken_locator(monkeypatch: pytest.MonkeyPatch) -> None:
    def find(self: _QueryLocator, args: Any, kwargs: Any) -> Any:
        raise RuntimeError("the locator broke")

    monkeypatch.setattr(_QueryLocator, "find", find)


def test_a_watcher_that_cannot_start_fails_the_call_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trail.jsonl"
    calls: list[str] = []

    @audited(sink=f"jsonl:{path}", fsync="always")
    def ask(query: str) -> Answer:
        calls.append(query)
        return Answer(1)

    broken_locator(monkeypatch)
    with pytest.raises(AuditError, match="not recorded: RuntimeError: the locator broke"):
        ask("q")
    assert calls == ["q"]  # as for any record that cannot be written: after the call

    async def run() -> None:
        @audited(sink=f"jsonl:{path}", fsync="always")
        async def ask_async(query: str) -> Answer:
            return Answer(1)

        await ask_async("q")

    with pytest.raises(AuditError, match="the locator broke"):
        asyncio.run(run())


def test_on_error_log_logs_a_watcher_that_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trail.jsonl"
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="ERROR", format="{message}")

    @audited(sink=f"jsonl:{path}", fsync="always", on_error="log")
    def ask(query: str) -> Answer:
        return Answer(1)

    broken_locator(monkeypatch)
    try:
        assert ask("q").value == 1
    finally:
        logger.remove(sink)
    assert any("a call was not recorded: the locator broke" in m for m in messages)
