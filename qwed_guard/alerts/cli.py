"""`qwed-guard alerts test`: send a test alert (and its resolve) to channels, before an outage."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `alerts test` to `subparsers` (from `parser.add_subparsers()`)."""
    alerts: argparse.ArgumentParser = subparsers.add_parser(
        "alerts",
        help="check alert channels",
        description="Check that alert channels (Slack, PagerDuty, webhook, email) deliver.",
    )
    commands = alerts.add_subparsers(dest="alerts_command", metavar="{test}")
    commands.required = True
    test = commands.add_parser(
        "test",
        help="send a test alert, then its resolve, to each channel; exit 1 if one fails",
        description="Send a `triggered` test alert and, unless --no-resolve, its `resolved` "
        "notice to every channel, as @alert_on_failures would, and report each channel.",
    )
    test.add_argument(
        "notify",
        help='channels as JSON, as in a policy\'s notify: \'[{"slack": {"webhook_url_env": '
        '"SLACK_URL"}}]\'',
    )
    test.add_argument("--key", default="qwed-guard-test", help="alert key (default: %(default)s)")
    test.add_argument("--no-resolve", action="store_true", help="send the trigger only")
    test.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait in all (default: %(default)s)"
    )
    test.set_defaults(run=_test)
    return alerts


def _test(args: argparse.Namespace) -> int:
    from qwed_guard import clock
    from qwed_guard.alerts.channels import build_channels
    from qwed_guard.alerts.delivery import Worker
    from qwed_guard.alerts.record import Alert, rfc3339
    from qwed_guard.errors import ParameterError
    from qwed_guard.outcomes import Outcome

    try:
        notify = json.loads(args.notify)
        channels = build_channels(notify)
    except json.JSONDecodeError as exc:
        print(f"qwed-guard alerts test: error: notify is not JSON: {exc}", file=sys.stderr)
        return 2
    except ParameterError as exc:
        print(f"qwed-guard alerts test: error: {exc}", file=sys.stderr)
        return 2
    if not channels:
        print("qwed-guard alerts test: error: no channels given", file=sys.stderr)
        return 2
    workers = [Worker(channel) for channel in channels]
    base: dict[str, Any] = {
        "key": args.key,
        "function": "qwed-guard alerts test",
        "policy_hash": None,
        "dedup_key": f"qwed-guard:{args.key}",
        "reason": "consecutive",
    }
    alerts = [
        Alert(
            timestamp=rfc3339(clock.wall()),
            kind="triggered",
            message=f"{args.key}: test alert from qwed-guard (nothing is failing)",
            failures=1,
            outcome=Outcome.TRANSIENT,
            error=None,
            **base,
        )
    ]
    if not args.no_resolve:
        alerts.append(
            Alert(
                timestamp=rfc3339(clock.wall()),
                kind="resolved",
                message=f"{args.key}: test alert resolved",
                failures=1,
                outcome=Outcome.VERIFIED,
                error=None,
                **base,
            )
        )
    for worker in workers:
        for alert in alerts:
            worker.submit(alert)
    failed = 0
    for worker in workers:
        finished = worker.flush(args.timeout)
        worker.stop(1.0)
        ok = finished and worker.failed == 0 and worker.sent == len(alerts)
        failed += not ok
        status = "ok" if ok else ("timed out" if not finished else "FAILED (see the log above)")
        print(f"{worker.channel.name}: {worker.sent}/{len(alerts)} delivered: {status}")
    return 1 if failed else 0
