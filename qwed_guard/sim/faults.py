"""Fault injection: what the simulator decides to do with each request.

Every chat-completions request gets exactly one `Reply`. It comes from the script while one is
left, else from the profile's rates, drawn from one `random.Random(seed)`. Each request consumes
the same five draws whatever the rates are, so a sequential run with one seed is reproducible and
a scripted prefix does not shift what follows. Outage windows come first: while one is open,
every request gets 503 whatever was drawn.

HTTP faults are exclusive and drawn from one uniform number in this order: unauthorized, quota,
rate_limit, error_5xx, malformed, hang (if the rates add up to more than 1, the later ones get
what is left). Content faults apply only where they mean something: ``wrong_answer`` on the
answer prompt (QWED refutes it), ``unevaluable`` on the expression prompt (QWED cannot evaluate
it). Latency (fixed + uniform jitter) is added to every request.

Time for outage windows is read through `qwed_guard.clock.monotonic()`, so a test can open and
heal an outage with a fake clock; the server's own waits (latency, hang) are real sleeps.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal

from qwed_guard import clock
from qwed_guard.sim.questions import PromptKind

ReplyKind = Literal[
    "ok",
    "error",
    "rate_limit",
    "quota",
    "unauthorized",
    "hang",
    "wrong_answer",
    "unevaluable",
    "malformed",
    "outage",
]

#: Profile names, for docs and the CLI.
PROFILES: Final[tuple[str, ...]] = ("healthy", "flaky", "outage")

RATE_NAMES: Final[tuple[str, ...]] = (
    "error_5xx",
    "rate_limit",
    "quota",
    "unauthorized",
    "hang",
    "wrong_answer",
    "unevaluable",
    "malformed",
)

_5XX: Final[tuple[int, ...]] = (500, 502, 503)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted or drawn reply. Build it with the class methods, not the constructor.

    `status` is the HTTP status for "error"; `seconds` is the hang for "hang" and the
    Retry-After for "rate_limit" (None: no Retry-After headers); `content` overrides the text
    of an "ok" reply.
    """

    kind: ReplyKind
    status: int = 200
    seconds: float | None = None
    content: str | None = None

    @classmethod
    def ok(cls, content: str | None = None) -> Reply:
        """A correct reply (or exactly `content`, if given)."""
        return cls("ok", content=content)

    @classmethod
    def error(cls, status: int = 503) -> Reply:
        """An HTTP error with OpenAI's body for that status (429 and 401 get their own kinds)."""
        if status == 429:
            return cls.rate_limited()
        if status == 401:
            return cls.unauthorized()
        if not 400 <= status <= 599:
            raise ValueError(f"an error status must be 400-599, got {status}")
        return cls("error", status=status)

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1.0) -> Reply:
        """429 rate_limit_exceeded; retry-after(-ms) headers unless `retry_after` is None."""
        if retry_after is not None and (not math.isfinite(retry_after) or retry_after < 0):
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after}")
        return cls("rate_limit", status=429, seconds=retry_after)

    @classmethod
    def quota(cls) -> Reply:
        """429 insufficient_quota: retrying cannot help."""
        return cls("quota", status=429)

    @classmethod
    def unauthorized(cls) -> Reply:
        """401 invalid_api_key."""
        return cls("unauthorized", status=401)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Reply:
        """Say nothing for `seconds` (longer than the client's timeout), then answer normally."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"hang seconds must be >= 0, got {seconds}")
        return cls("hang", seconds=seconds)

    @classmethod
    def wrong_answer(cls) -> Reply:
        """A wrong number (answer prompt) or code for a wrong number (expression prompt)."""
        return cls("wrong_answer")

    @classmethod
    def unevaluable(cls) -> Reply:
        """Code QWED rejects (expression prompt); prose instead of a number (answer prompt)."""
        return cls("unevaluable")

    @classmethod
    def malformed(cls) -> Reply:
        """200 with a body that is not valid JSON."""
        return cls("malformed")

    @classmethod
    def outage(cls) -> Reply:
        """503 as during an outage window."""
        return cls("outage", status=503)

    @property
    def stat_key(self) -> str:
        """The key this reply is counted under in the stats ("error_503", "rate_limit", ...)."""
        return f"error_{self.status}" if self.kind == "error" else self.kind


_SHORT: Final[dict[str, Reply]] = {
    "ok": Reply.ok(),
    "429": Reply.rate_limited(),
    "rate_limit": Reply.rate_limited(),
    "quota": Reply.quota(),
    "401": Reply.unauthorized(),
    "unauthorized": Reply.unauthorized(),
    "wrong": Reply.wrong_answer(),
    "wrong_answer": Reply.wrong_answer(),
    "unevaluable": Reply.unevaluable(),
    "malformed": Reply.malformed(),
    "hang": Reply.hang(),
    "outage": Reply.outage(),
}


def as_reply(item: Reply | str | int) -> Reply:
    """A script item as a Reply: a Reply, a short name ("ok", "quota", ...) or a status code."""
    if isinstance(item, Reply):
        return item
    if isinstance(item, bool):
        raise ValueError(f"not a script item: {item!r}")
    if isinstance(item, int):
        return Reply.ok() if item == 200 else Reply.error(item)
    key = item.strip().lower()
    if key in _SHORT:
        return _SHORT[key]
    if key.isdigit() and len(key) == 3:
        return Reply.ok() if key == "200" else Reply.error(int(key))
    raise ValueError(
        f"unknown script item {item!r}; use a Reply, a status code or one of: {', '.join(_SHORT)}"
    )


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Rates (probabilities per request) and timings. Validate with `FaultConfig.build`."""

    error_5xx: float = 0.0
    rate_limit: float = 0.0
    quota: float = 0.0
    unauthorized: float = 0.0
    hang: float = 0.0
    wrong_answer: float = 0.0
    unevaluable: float = 0.0
    malformed: float = 0.0
    latency: float = 0.0
    jitter: float = 0.0
    hang_seconds: float = 30.0
    retry_after: float = 0.5
    outage_after: float | None = None
    outage_after_requests: int | None = None
    outage_seconds: float = 10.0

    @classmethod
    def build(cls, profile: str = "healthy", **overrides: Any) -> FaultConfig:
        """The named profile with `overrides` on top; ValueError (one line) on bad input."""
        if profile not in _PROFILE_CONFIGS:
            raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown simulator option {unknown[0]!r}; options are: {', '.join(sorted(known))}"
            )
        config = replace(_PROFILE_CONFIGS[profile], **overrides)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in RATE_NAMES:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a rate in [0, 1], got {value!r}")
        for name in ("latency", "jitter", "hang_seconds", "retry_after", "outage_seconds"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
        if self.outage_after is not None and (
            not _is_number(self.outage_after)
            or not math.isfinite(self.outage_after)
            or self.outage_after < 0
        ):
            raise ValueError(f"outage_after must be >= 0 seconds, got {self.outage_after!r}")
        n = self.outage_after_requests
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"outage_after_requests must be an integer >= 0, got {n!r}")

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain data (for /stats and the CLI banner)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_FLAKY = FaultConfig(error_5xx=0.20, rate_limit=0.05, wrong_answer=0.10)
_PROFILE_CONFIGS: Final[dict[str, FaultConfig]] = {
    "healthy": FaultConfig(),
    "flaky": _FLAKY,
    "outage": replace(_FLAKY, outage_after=2.0, outage_seconds=10.0),
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: the reply, the extra delay, and the draw for wrong values."""

    reply: Reply
    delay: float
    u_wrong: float
    index: int


@dataclass(slots=True)
class _Window:
    start: float
    end: float


@dataclass
class FaultPlan:
    """The per-request decision machine: script, seeded rates, outage windows. Thread-safe."""

    config: FaultConfig
    seed: int = 0
    script: Sequence[Reply] = ()
    _rng: random.Random = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _index: int = field(init=False, default=0)
    _started: float = field(init=False, default=0.0)
    _windows: list[_Window] = field(init=False, default_factory=list)
    _scheduled: _Window | None = field(init=False, default=None)
    _request_outage_armed: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.script = tuple(self.script)
        self.restart()

    def restart(self) -> None:
        """Start the profile's clock: a time-based outage is scheduled from now."""
        with self._lock:
            self._started = clock.monotonic()
            if self._scheduled is not None:
                self._windows.remove(self._scheduled)
                self._scheduled = None
            after = self.config.outage_after
            if after is not None:
                start = self._started + after
                self._scheduled = _Window(start, start + self.config.outage_seconds)
                self._windows.append(self._scheduled)

    def outage(self, seconds: float, start_in: float = 0.0) -> None:
        """Open an outage window of `seconds`, starting `start_in` seconds from now."""
        if not math.isfinite(seconds) or seconds < 0 or not math.isfinite(start_in) or start_in < 0:
            raise ValueError(f"an outage needs seconds >= 0 and start_in >= 0, got {seconds}")
        with self._lock:
            start = clock.monotonic() + start_in
            self._windows.append(_Window(start, start + seconds))

    def end_outage(self) -> None:
        """Heal now: close every outage window that is open (scheduled ones still come)."""
        with self._lock:
            now = clock.monotonic()
            for window in self._windows:
                if window.start <= now < window.end:
                    window.end = now

    def in_outage(self, now: float | None = None) -> bool:
        """Whether an outage window is open at `now` (default: the active clock's now)."""
        t = clock.monotonic() if now is None else now
        with self._lock:
            return any(w.start <= t < w.end for w in self._windows)

    def decide(self, prompt: PromptKind) -> Decision:
        """The reply for the next request of kind `prompt`."""
        cfg = self.config
        with self._lock:
            index = self._index
            self._index += 1
            u_http, u_status, u_content, u_jitter, u_wrong = (self._rng.random() for _ in range(5))
            now = clock.monotonic()
            n = cfg.outage_after_requests
            if n is not None and self._request_outage_armed and index >= n:
                self._request_outage_armed = False
                self._windows.append(_Window(now, now + cfg.outage_seconds))
            outage = any(w.start <= now < w.end for w in self._windows)
        delay = cfg.latency + cfg.jitter * u_jitter
        if index < len(self.script):
            reply = self.script[index]
        elif outage:
            reply = Reply.outage()
        else:
            reply = self._draw(prompt, u_http, u_status, u_content)
        return Decision(reply, delay, u_wrong, index)

    def _draw(self, prompt: PromptKind, u_http: float, u_status: float, u_content: float) -> Reply:
        cfg = self.config
        edge = 0.0
        http: tuple[tuple[float, Reply], ...] = (
            (cfg.unauthorized, Reply.unauthorized()),
            (cfg.quota, Reply.quota()),
            (cfg.rate_limit, Reply.rate_limited(cfg.retry_after)),
            (cfg.error_5xx, Reply.error(_5XX[min(int(u_status * 3), 2)])),
            (cfg.malformed, Reply.malformed()),
            (cfg.hang, Reply.hang(cfg.hang_seconds)),
        )
        for rate, reply in http:
            edge += rate
            if u_http < edge:
                return reply
        if prompt == "answer" and u_content < cfg.wrong_answer:
            return Reply.wrong_answer()
        if prompt == "expression" and u_content < cfg.unevaluable:
            return Reply.unevaluable()
        return Reply.ok()

    @property
    def requests_decided(self) -> int:
        """How many requests have been decided so far."""
        return self._index


def parse_script(items: Iterable[Reply | str | int] | None) -> tuple[Reply, ...]:
    """A script as Replies; ValueError on an unknown item."""
    return tuple(as_reply(item) for item in items or ())


def rates_summary(config: FaultConfig) -> Mapping[str, float]:
    """The non-zero rates, for a one-line banner."""
    return {name: getattr(config, name) for name in RATE_NAMES if getattr(config, name)}
