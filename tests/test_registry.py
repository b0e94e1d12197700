"""Sinks and channels from a registry: a third-party sink registered by scheme is written by
@audited and read back by `audit verify`; a third-party channel registered by name is built
from `notify` data and delivers; unknown names list the known ones; rows import lazily."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from qwed_guard.alerts import Alert, alert_on_failures, flush
from qwed_guard.alerts.channels import CHANNELS, Channel, build_channels, register_channel
from qwed_guard.audit import audited, read_records, verify_trail
from qwed_guard.audit.chain import checkpoint_entry
from qwed_guard.audit.cli import main as audit_main
from qwed_guard.audit.record import GENESIS
from qwed_guard.audit.sinks import SINKS, ChainedSink, Trail, register_sink, sink_from_url
from qwed_guard.audit.sinks.base import Row
from qwed_guard.errors import ParameterError
from tests.trails import attempts_of

KEY = "QWED_GUARD_TEST_REGISTRY_KEY"
STORES: dict[str, list[bytes]] = {}
"""A trail's lines by name: the whole storage of the `listy:` sink."""
ENTRIES: dict[str, list[bytes]] = {}
"""Its checkpoint entries, kept apart from the trail as a checkpoint file would be."""


class ListSink(ChainedSink):
    """`listy:NAME`: a chained sink whose storage is a list in this module."""

    kind = "listy"
    schemes = ("listy",)

    def __init__(self, url: str, **common: Any) -> None:
        super().__init__(**common)
        self.name = url.partition(":")[2]
        self.lines = STORES.setdefault(self.name, [])
        self.entries = ENTRIES.setdefault(self.name, [])

    @classmethod
    def reader(cls, url: str) -> ListTrail:
        return ListTrail(url)

    def _commit(
        self, records: list[dict[str, Any]], durable: bool, *, checkpoint: bool = False
    ) -> None:
        last = orjson.loads(self.lines[-1]) if self.lines else {"seq": 0, "hash": GENESIS}
        sealed = self._seal(records, last["seq"], last["hash"], checkpoint)
        self.lines.extend(line for _, line, _ in sealed.rows)
        if sealed.signed is not None and self.key is not None:
            prev = orjson.loads(self.entries[-1])["mac"] if self.entries else ""
            entry = checkpoint_entry(self.key, *sealed.signed, prev)
            self.entries.append(orjson.dumps(entry) + b"\n")
        self._unsigned = sealed.unsigned


class ListTrail(Trail):
    checkpoints_name = "the listy checkpoints"

    def __init__(self, url: str) -> None:
        self.name = url
        self.store = url.partition(":")[2]

    def rows(self) -> Iterator[Row]:
        for number, line in enumerate(STORES.get(self.store, []), 1):
            yield f"{self.name} line {number}", line, True, None

    def checkpoints(self) -> list[bytes]:
        return ENTRIES.get(self.store, [])


class Collect(Channel):
    """`{"collect": {"box": NAME}}`: alerts land in `BOXES[NAME]` (built by the default
    `from_options`, `Collect(**settings)`)."""

    def __init__(self, box: str) -> None:
        self.name = f"collect({box})"
        self.box = BOXES.setdefault(box, [])

    def send(self, alert: Alert) -> None:
        self.box.append(alert)


BOXES: dict[str, list[Alert]] = {}


@pytest.fixture(autouse=True)
def _registries_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test registers is gone after it."""
    for registry in (SINKS, CHANNELS):
        monkeypatch.setattr(registry, "_rows", dict(registry._rows))


def _audit(*argv: str) -> int:
    return audit_main(["audit", *argv])


def test_a_registered_sink_is_written_and_audit_verify_reads_it_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(KEY, "k" * 32)
    register_sink("listy", f"{__name__}:ListSink")  # imported when a listy: URL opens

    @audited(sink="listy:first", key_env=KEY, checkpoint_every=4)
    def double(query: str) -> str:
        return query * 2

    for word in ("a", "b", "c"):
        double(word)
    sink = sink_from_url("listy:first")
    assert isinstance(sink, ListSink) and sink is sink_from_url("listy:first")  # one writer
    assert sink is not sink_from_url("listy:first", batch_size=7)  # other options, its own

    records = list(read_records("listy:first"))
    # Each call answered at once: one call record, its attempt inline.
    assert [r["event"] for r in records][:3] == ["genesis", "call", "call"]
    assert [a["outcome"] for a in attempts_of(records)] == ["unchecked"] * 3
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert any(r["event"] == "checkpoint" for r in records)  # every 4 records
    assert verify_trail("listy:first").ok

    assert _audit("verify", "listy:first", "--key-env", KEY) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK listy:first: {len(records)} records, seq 1-{len(records)}")
    assert "verified with the key" in out

    edited = orjson.loads(STORES["first"][3])
    edited["query"] = "forged"
    STORES["first"][3] = orjson.dumps(edited) + b"\n"
    assert _audit("verify", "listy:first", "--key-env", KEY) == 1
    assert "TAMPERED listy:first: seq 4 edited" in capsys.readouterr().out

    assert _audit("stats", "listy:first") == 0
    assert capsys.readouterr().out.startswith(f"listy:first: {len(records)} records, 3 calls")


def test_a_registered_sink_class_gets_only_the_options_it_takes() -> None:
    register_sink("listy", ListSink)
    with pytest.raises(ParameterError, match=r"rotate_bytes: listy: sinks do not take it"):
        sink_from_url("listy:second", rotate_bytes=10)
    # How to write (batching) is tuning a sink may ignore; None means unset.
    assert isinstance(sink_from_url("listy:second", rotate_bytes=None), ListSink)


def test_unknown_schemes_and_missing_modules_are_named() -> None:
    with pytest.raises(ParameterError, match=r"sink: unsupported sink URL 'ftp://x' \(supported"):
        sink_from_url("ftp://x")
    with pytest.raises(ParameterError) as caught:
        sink_from_url("ftp://x")
    for scheme in ("jsonl", "sqlite", "postgresql", "memory", "loguru"):
        assert scheme in str(caught.value)
    register_sink("absent", "qwed_guard_no_such_package.sinks:Sink")  # not imported yet
    with pytest.raises(ParameterError, match="needs qwed_guard_no_such_package"):
        sink_from_url("absent:x")
    assert _audit("verify", "nosuch://x") == 2
    with pytest.raises(ParameterError, match="a lowercase name"):
        register_sink("Bad:Scheme", ListSink)


def test_built_in_sinks_are_imported_only_when_their_scheme_is_opened() -> None:
    code = (
        "import sys\n"
        "from qwed_guard.audit.sinks import sink_from_url\n"
        "sink_from_url('memory:')\n"
        "print(sorted(m for m in sys.modules if m.startswith('qwed_guard.audit.sinks.')))\n"
        "sink_from_url('sqlite:' + sys.argv[1])\n"
        "print('qwed_guard.audit.sinks.sqlite' in sys.modules, 'psycopg' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "/tmp/qwed-guard-registry-test.db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, second = done.stdout.splitlines()
    assert "sqlite" not in first and "postgres" not in first
    assert second == "True False"


def test_a_registered_channel_is_built_from_notify_and_delivers() -> None:
    register_channel("collect", Collect)

    @alert_on_failures(threshold=1, notify=[{"collect": {"box": "ops"}}])
    def check(ok: bool) -> Any:
        if not ok:
            raise ConnectionError("503")
        return True

    with pytest.raises(ConnectionError):
        check(False)
    check(True)
    flush(5.0)
    assert [alert.kind for alert in BOXES["ops"]] == ["triggered", "resolved"]


def test_a_channel_registered_by_path_is_imported_when_used_and_checks_its_settings() -> None:
    register_channel("collect2", f"{__name__}:Collect")
    (channel,) = build_channels([{"collect2": {"box": "b"}}])
    assert isinstance(channel, Collect) and channel.name == "collect(b)"
    with pytest.raises(ParameterError, match=r"notify: \[0\] collect2: .*unexpected keyword"):
        build_channels([{"collect2": {"bin": "b"}}])
    with pytest.raises(ParameterError, match=r"unknown channel 'nosuch'; choose from .*collect"):
        build_channels([{"nosuch": {}}])
    with pytest.raises(ParameterError, match=r"expected a class or 'package\.module:Class'"):
        register_channel("broken", "no_colon")


def test_trails_are_read_back_from_a_path_object_as_from_a_string(tmp_path: Path) -> None:
    from qwed_guard.audit.sinks import close_all

    trail = tmp_path / "audit.jsonl"

    @audited(sink=f"jsonl:{trail}")
    def ask(query: str) -> bool:
        return True

    ask("q")
    close_all()
    assert [r["event"] for r in read_records(trail)] == ["call"]  # its attempt inline
    assert list(read_records(str(trail))) == list(read_records(trail))
    assert [a["attempt"] for a in attempts_of(read_records(trail))] == [1]
    assert verify_trail(trail).ok and verify_trail(str(trail)).ok


def test_a_sink_or_trail_class_missing_its_storage_is_refused_when_made() -> None:
    class NoCommit(ChainedSink):
        pass

    class NoRows(Trail):
        pass

    with pytest.raises(TypeError, match="_commit"):
        NoCommit()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="rows"):
        NoRows()  # type: ignore[abstract]
