"""What one alert says, and the bounded history a decorated function keeps of them."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, overload

from qwed_guard.outcomes import Outcome

__all__ = ["Alert", "AlertHistory", "AlertKind", "rfc3339"]

AlertKind = Literal["triggered", "repeat", "resolved"]
Reason = Literal["consecutive", "rate", "permanent"]


def rfc3339(wall: float) -> str:
    """UTC time as RFC 3339 with milliseconds and a `Z`: `2026-01-01T00:00:00.000Z`."""
    moment = datetime.fromtimestamp(wall, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification: a failure streak began (`triggered`), goes on (`repeat`) or ended."""

    timestamp: str
    """When it was raised, UTC, RFC 3339 (`...Z`)."""
    key: str
    """What is alerting: the function's qualified name unless `key=` grouped functions."""
    kind: AlertKind
    message: str
    failures: int
    """Consecutive failed calls so far (for `resolved`: how many preceded the recovery)."""
    outcome: Outcome
    """How the call that raised this alert ended."""
    error: str | None
    """That call's error, secrets scrubbed."""
    function: str
    policy_hash: str | None
    dedup_key: str
    """Stable across processes and restarts: a trigger and its resolve share it."""
    reason: Reason
    """What tripped the alert: a streak, the failure rate, or a permanent failure."""
    failure_rate: float | None = None
    """Failed share of the recent-calls window, when the rate window is enabled."""

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-able data (what the generic webhook posts)."""
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data

    @property
    def title(self) -> str:
        """A one-line heading: `[qwed-guard] TRIGGERED app.verify`."""
        return f"[qwed-guard] {self.kind.upper()} {self.key}"

    def text(self) -> str:
        """The alert as a few lines of plain text (Slack, email, logs)."""
        lines = [self.title, self.message]
        details = f"function: {self.function} | failures: {self.failures} | outcome: {self.outcome}"
        if self.failure_rate is not None:
            details += f" | failure rate: {self.failure_rate:.0%}"
        lines.append(details)
        if self.error and self.error not in self.message:
            lines.append(f"error: {self.error}")
        tail = f"at: {self.timestamp} | dedup_key: {self.dedup_key}"
        if self.policy_hash:
            tail += f" | policy: {self.policy_hash}"
        lines.append(tail)
        return "\n".join(lines)


class AlertHistory(Sequence[Alert]):
    """The most recent alerts of one decorated function, oldest first, at most `maxlen`."""

    def __init__(self, maxlen: int = 100) -> None:
        self._items: deque[Alert] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    @property
    def maxlen(self) -> int:
        return self._items.maxlen or 0

    def append(self, alert: Alert) -> None:
        with self._lock:
            self._items.append(alert)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _snapshot(self) -> list[Alert]:
        with self._lock:
            return list(self._items)

    @overload
    def __getitem__(self, index: int) -> Alert: ...

    @overload
    def __getitem__(self, index: slice) -> list[Alert]: ...

    def __getitem__(self, index: int | slice) -> Alert | list[Alert]:
        return self._snapshot()[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Alert]:
        return iter(self._snapshot())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AlertHistory):
            return self._snapshot() == other._snapshot()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._snapshot() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AlertHistory({self._snapshot()!r})"

    def kinds(self) -> list[AlertKind]:
        """The kinds in order, e.g. `["triggered", "repeat", "resolved"]`."""
        return [alert.kind for alert in self._snapshot()]
