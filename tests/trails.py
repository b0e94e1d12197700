"""Reading audit records back in tests: a call's attempts, wherever the trail holds them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def attempts_of(
    records: Iterable[dict[str, Any]], call_id: str | None = None
) -> list[dict[str, Any]]:
    """Every attempt the records hold (of `call_id`'s call, if given), in trail order.

    Failed attempts are `attempt` records of their own; since schema v2 the answered last
    attempt is inline in its call record (`answered`): it is listed here, at the call's place,
    as that object plus `event: "attempt"`, the call's `call_id` and `inline: True`.
    """
    found: list[dict[str, Any]] = []
    for record in records:
        if call_id is not None and record.get("call_id") != call_id:
            continue
        event = record.get("event")
        if event == "attempt":
            found.append(record)
        elif event == "call" and record.get("answered") is not None:
            inline = record["answered"]
            assert isinstance(inline, dict) and "event" not in inline and "call_id" not in inline
            found.append(
                {**inline, "event": "attempt", "call_id": record["call_id"], "inline": True}
            )
    return found
