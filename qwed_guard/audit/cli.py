"""`qwed-guard audit verify | show | stats`: check, read and summarise an audit trail.

`register(subparsers)` adds the `audit` command to an argparse parser; each subcommand sets
`run(args) -> int` (the exit code). `python -m qwed_guard.audit ...` runs it standalone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main", "register"]

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `audit verify|show|stats` to `subparsers` (from `parser.add_subparsers()`)."""
    audit = subparsers.add_parser(
        "audit",
        help="verify, show and summarise an audit trail",
        description="Verify, show and summarise an audit trail written by @audited.",
    )
    commands = audit.add_subparsers(dest="audit_command", metavar="{verify,show,stats}")
    commands.required = True

    verify = commands.add_parser(
        "verify",
        help="check the hash chain and checkpoints; exit 1 naming the first bad seq",
        description="Exit 0 with a one-line summary when the trail is intact; exit 1 "
        "(TAMPERED) naming the first bad seq and why (edited, forged, missing, reordered, "
        "truncated, bad_checkpoint); exit 2 when the input cannot be read (usage, no such "
        "file, not a trail, a FIFO or device).",
    )
    verify.add_argument(
        "path",
        help="a JSONL trail (its rotated files are found), an SQLite file, or a sink URL such "
        "as postgresql://... (?table=NAME; ${VAR} and PGPASSWORD work)",
    )
    verify.add_argument(
        "--key-env", metavar="VAR", help="environment variable holding the checkpoint HMAC key"
    )
    verify.add_argument(
        "--checkpoints", metavar="FILE", help="checkpoint file (default: PATH.checkpoints)"
    )
    verify.add_argument(
        "--anchor",
        metavar="FILE",
        help="the anchor file the writer kept elsewhere (anchor=): the trail must reach every "
        "checkpoint it holds",
    )
    verify.set_defaults(run=_verify)

    show = commands.add_parser("show", help="the records as a table")
    show.add_argument("path")
    show.add_argument("--call", metavar="ID", help="only this call (a call_id or its prefix)")
    show.add_argument("--outcome", metavar="X", help="only records with this outcome")
    show.add_argument(
        "--since", metavar="T", help="only records at or after T (RFC 3339 time/date, or 30m/2h/7d)"
    )
    show.add_argument("--event", choices=["attempt", "call", "checkpoint", "repair"])
    show.add_argument("--limit", type=_count, default=0, help="only the last N matching records")
    show.set_defaults(run=_show)

    stats = commands.add_parser(
        "stats", help="counts by outcome, attempts per call, p50/p95 durations"
    )
    stats.add_argument("path")
    stats.set_defaults(run=_stats)
    return audit  # type: ignore[no-any-return]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10000000, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qwed-guard")
    register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return int(exc.code or 0)
    code: int = args.run(args)
    return code


def _console() -> Any:
    from rich.console import Console

    return Console(width=max(os.get_terminal_size(1).columns if sys.stdout.isatty() else 140, 100))


def _error(message: str) -> int:
    from qwed_guard.redact import scrub

    line = " ".join(message.split())  # one line, whatever the error held
    print(f"qwed-guard audit: {scrub(line)}", file=sys.stderr)
    return 2


def _trail(path: str, missing_ok: bool = False) -> Any:
    """The trail at `path`, or why it cannot be read (no such file, FIFO, device, an unknown
    scheme, a sink's missing dependency) as a string."""
    from qwed_guard.audit.sinks import open_trail

    try:
        trail = open_trail(path)
    except ValueError as exc:
        return str(exc)
    return trail.unreadable(missing_ok) or trail


def _verify(args: argparse.Namespace) -> int:
    from qwed_guard.audit.chain import key_from_env
    from qwed_guard.audit.sinks.files import check_readable
    from qwed_guard.audit.verify import verify_trail

    # A deleted trail whose checkpoints survive is a verdict (truncated), not a usage error.
    trail = _trail(args.path, os.path.exists(args.checkpoints or f"{args.path}.checkpoints"))
    if isinstance(trail, str):
        return _error(trail)
    for extra in (args.checkpoints, args.anchor):
        try:
            check_readable(extra or "")
        except ValueError as exc:
            return _error(str(exc))
    key = None
    if args.key_env:
        try:
            key = key_from_env(args.key_env)
        except (KeyError, ValueError) as exc:
            return _error(str(exc).strip("'\""))
    try:
        report = verify_trail(
            args.path, key=key, checkpoint_path=args.checkpoints, anchor=args.anchor
        )
    except trail.errors as exc:
        return _error(_scrubbed(exc))
    print(_printable(report.summary()))
    return 0 if report.ok else 1


def _printable(text: str) -> str:
    """CLI output: secrets scrubbed, and text a terminal can show (no lone surrogates)."""
    from qwed_guard.redact import scrub

    return scrub(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _name(trail: Any) -> str:
    name: str = trail.name
    return name if "://" in name else os.path.basename(name)


def _scrubbed(exc: BaseException) -> str:
    from qwed_guard.redact import scrub

    return scrub(str(exc).strip() or type(exc).__name__)


def _parse_since(text: str) -> float:
    match = _RELATIVE.fullmatch(text.strip())
    if match is not None:
        return time.time() - float(match.group(1)) * _UNITS[match.group(2)]
    value = text.strip().replace("Z", "+00:00")
    when = datetime.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _ts(record: dict[str, Any]) -> float | None:
    ts = record.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _clip(value: Any, width: int) -> str:
    if value is None:
        return ""
    text = _printable(value if isinstance(value, str) else str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def _ms(record: dict[str, Any]) -> str:
    micros = record.get("duration_us")
    return f"{micros / 1000:.1f}" if isinstance(micros, int) else ""


def _expanded(record: dict[str, Any]) -> Iterator[tuple[dict[str, Any], bool]]:
    """What `show` lists for `record`: its inline answered attempt first, if it holds one (as
    an attempt record, flagged True), then the record itself."""
    from qwed_guard.audit.record import inline_attempt

    inline = inline_attempt(record)
    if inline is not None:
        yield inline, True
    yield record, False


def _show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from qwed_guard.audit.verify import read_records

    trail = _trail(args.path)
    if isinstance(trail, str):
        return _error(trail)
    try:
        since = _parse_since(args.since) if args.since else None
    except (ValueError, OverflowError):
        return _error(f"--since {args.since!r}: use an RFC 3339 time, a date, or 30m/2h/7d")
    # Streamed: with --limit only the last N matching records are ever held.
    rows: deque[tuple[dict[str, Any], bool]] | list[tuple[dict[str, Any], bool]] = (
        deque(maxlen=args.limit) if args.limit else []
    )
    try:
        for stored in read_records(args.path):
            if args.call and not str(stored.get("call_id") or "").startswith(args.call):
                continue
            if since is not None:
                when = _ts(stored)
                if when is None or when < since:
                    continue
            for row in _expanded(stored):  # an answered attempt is listed as an attempt
                if args.outcome and row[0].get("outcome") != args.outcome:
                    continue
                if args.event and row[0].get("event") != args.event:
                    continue
                rows.append(row)
    except trail.errors as exc:
        return _error(_scrubbed(exc))
    table = Table(title=f"{_name(trail)}: {len(rows)} records", show_lines=False)
    for column, justify in (
        ("seq", "right"),
        ("time (UTC)", "left"),
        ("call", "left"),
        ("event", "left"),
        ("#", "right"),
        ("function", "left"),
        ("outcome", "left"),
        ("source", "left"),
        ("ms", "right"),
        ("query", "left"),
        ("error / reason", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for record, inline in rows:
        ts = str(record.get("ts") or "")
        function = str(record.get("function") or "").rsplit(".", 1)[-1]
        detail = record.get("error") or record.get("reason")
        if record.get("event") == "checkpoint":
            detail = f"signs seq {record.get('covers_seq')}"
        elif record.get("event") == "repair":
            detail = f"dropped {record.get('dropped_bytes')} torn bytes"
        seq = str(record.get("seq", ""))
        table.add_row(
            f"({seq})" if inline else seq,  # an answered attempt: inside call record `seq`
            ts.replace("T", " ")[:23],
            _clip(record.get("call_id"), 22),
            str(record.get("event") or ""),
            str(record.get("attempt") or ""),
            _clip(function, 24),
            str(record.get("outcome") or ""),
            str(record.get("source") or ""),
            _ms(record),
            _clip(record.get("query"), 36),
            _clip(detail, 48),
        )
    _console().print(table)
    return 0


def _percentile(values: list[int], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(int(-(-fraction * len(ordered) // 1)), 1)
    return float(ordered[min(rank, len(ordered)) - 1])


def _stats(args: argparse.Namespace) -> int:
    trail = _trail(args.path)
    if isinstance(trail, str):
        return _error(trail)
    try:
        return _summarise(args.path, _name(trail))
    except trail.errors as exc:
        return _error(_scrubbed(exc))


def _summarise(path: str, name: str) -> int:
    from rich.table import Table

    from qwed_guard.audit.verify import read_records

    outcomes: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    attempts_per_call: Counter[int] = Counter()
    attempt_outcomes: Counter[str] = Counter()
    call_us: list[int] = []
    attempt_us: list[int] = []
    records = 0
    first_ts = last_ts = None
    for record in read_records(path):
        records += 1
        ts = record.get("ts")
        if isinstance(ts, str):
            first_ts = first_ts or ts
            last_ts = ts
        event = record.get("event")
        duration = record.get("duration_us")
        if event == "call":
            outcomes[str(record.get("outcome"))] += 1
            sources[str(record.get("source") or "raised")] += 1
            attempts = record.get("attempt")
            attempts_per_call[attempts if isinstance(attempts, int) else 0] += 1
            if isinstance(duration, int):
                call_us.append(duration)
            inline = record.get("answered")  # v2: the answered attempt, inline
            if isinstance(inline, dict):
                attempt_outcomes[str(inline.get("outcome"))] += 1
                duration = inline.get("duration_us")
                if isinstance(duration, int):
                    attempt_us.append(duration)
        elif event == "attempt":
            attempt_outcomes[str(record.get("outcome"))] += 1
            if isinstance(duration, int):
                attempt_us.append(duration)
    calls = sum(outcomes.values())
    console = _console()
    console.print(
        f"{name}: {records} records, {calls} calls, "
        f"{sum(attempt_outcomes.values())} attempts"
        + (f", {first_ts} .. {last_ts}" if first_ts else "")
    )
    table = Table(title="calls by outcome")
    table.add_column("outcome")
    table.add_column("calls", justify="right")
    table.add_column("share", justify="right")
    table.add_column("attempts", justify="right")
    for outcome in sorted(set(outcomes) | set(attempt_outcomes)):
        share = f"{100 * outcomes[outcome] / calls:.1f}%" if calls else "-"
        table.add_row(outcome, str(outcomes[outcome]), share, str(attempt_outcomes[outcome]))
    console.print(table)
    if sources:
        console.print(
            "calls by source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))
        )
    if attempts_per_call:
        mean = sum(k * v for k, v in attempts_per_call.items()) / calls
        spread = ", ".join(f"{k}: {v}" for k, v in sorted(attempts_per_call.items()))
        console.print(f"attempts per call: mean {mean:.2f} ({spread})")
    for label, values in (("call", call_us), ("attempt", attempt_us)):
        if values:
            p50 = _percentile(values, 0.50) / 1000
            p95 = _percentile(values, 0.95) / 1000
            console.print(f"{label} duration: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
