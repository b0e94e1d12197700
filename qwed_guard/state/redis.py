"""Guard state shared by every worker process, in Redis.

    from qwed_guard import circuit_breaker
    @circuit_breaker(failure_threshold=5, state="redis://127.0.0.1:6379/0")

`RedisStore` implements the `StateStore` protocol of `qwed_guard.state`: each `update` reads the
JSON value under the key, runs the pure `change` on it, and writes the result back with a
compare-and-set Lua script that succeeds only if the value is still the one read; otherwise it
runs `change` again on the fresh value. So N processes updating one key behave as one process.
A change that leaves the value as it was (the breaker's hot path) costs one GET and no write.

Keys live under a prefix (`qwed_guard:` by default) and expire `ttl` seconds (7 days by default)
after their last write, so state of retired functions does not pile up.

When Redis cannot be reached the guarded call goes on: the store switches to a private in-memory
store, logs the degradation once, calls the `on_degraded` listeners once, and tries Redis again
at most every `probe_interval` seconds; the first success switches back (the in-memory state of
the outage is dropped: the shared state wins) and calls `on_recovered`.

URL forms: `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS), with `${VAR}`
expanded from the environment (`redis://:${REDIS_PASSWORD}@cache:6379/0`) so a policy file
needs no secret, and the store's own options as query parameters:
`?prefix=app:&ttl=3600&probe_interval=5`.
Any other query parameter goes to redis-py (`socket_timeout=...`). The URL is logged and shown
only without its credentials.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from qwed_guard import clock
from qwed_guard import hooks as _hooks
from qwed_guard.outcomes import scrub
from qwed_guard.state.base import Change, State
from qwed_guard.state.memory import MemoryStore
from qwed_guard.urls import display_url, split_url

if TYPE_CHECKING:
    from redis.commands.core import Script

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_PROBE_INTERVAL",
    "DEFAULT_TTL",
    "RedisStore",
    "redis_store",
]

T = TypeVar("T")

DEFAULT_PREFIX = "qwed_guard:"
DEFAULT_TTL = 7 * 24 * 3600.0
DEFAULT_PROBE_INTERVAL = 5.0
# Every lost race means another process's write landed, so this only stops a runaway loop.
_MAX_CONFLICTS = 10_000

# Compare-and-set: write ARGV[3] (delete when empty) with TTL ARGV[4] ms (none when 0) only if
# the key still holds ARGV[2] (ARGV[1] == "1") or is still absent (ARGV[1] == "0"). On a lost
# race the current value comes back, so the retry costs no extra GET.
_CAS = """
local current = redis.call('GET', KEYS[1])
local expected_present = ARGV[1] == '1'
if (current == false and expected_present) or (current ~= false and
    (not expected_present or current ~= ARGV[2])) then
  return {0, current}
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
elseif ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return {1}
"""

_OWN_OPTIONS = ("prefix", "ttl", "probe_interval")

Listener = Callable[[str], None]


def _number(name: str, text: str, minimum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"state: {name} must be a number, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"state: {name} must be >= {minimum:g}, got {text}")
    return value


def _as_bytes(value: object) -> bytes | None:
    # Bytes unless the URL asked redis-py for `decode_responses=true`.
    return value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else None


class RedisStore:
    """A `StateStore` in Redis, shared by every process that uses the same URL and prefix.

    `ttl` (seconds, None for never) is the default lifetime of a key after its last write.
    `connect_timeout` and `timeout` bound how long a call can wait on an unreachable or stuck
    Redis: at most one such wait per `probe_interval` while degraded.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float | None = DEFAULT_TTL,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        connect_timeout: float = 0.5,
        timeout: float = 2.0,
        on_degraded: Listener | None = None,
        on_recovered: Listener | None = None,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss"):
            raise ValueError(
                f"state: expected a redis:// or rediss:// URL, got {scrub(str(url))!r}"
            )
        parts, own, rest = split_url(url, _OWN_OPTIONS, "state")
        if "prefix" in own:
            prefix = own["prefix"]
        if "ttl" in own:
            ttl = _number("ttl", own["ttl"], 0) or None
        if "probe_interval" in own:
            probe_interval = _number("probe_interval", own["probe_interval"], 0)
        self.url = display_url(url)
        """The URL without credentials, for logs and reprs."""
        self.prefix = prefix
        self.ttl = ttl
        self.probe_interval = float(probe_interval)
        full = urlunsplit(parts._replace(query=urlencode(rest)))
        # No redis-py retries: they sleep for real, and this store copes on its own. (A pooled
        # connection that died with a restarted server is replaced when it is checked out.)
        self._client: redis.Redis = redis.Redis.from_url(
            full,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._cas: Script = self._client.register_script(_CAS)
        self._lock = threading.Lock()
        self._fallback = MemoryStore()
        self._degraded = False
        self._next_probe = 0.0
        self._on_degraded: list[Listener] = []
        self._on_recovered: list[Listener] = []
        self.add_listener(on_degraded=on_degraded, on_recovered=on_recovered)

    # ------------------------------------------------------------------ StateStore

    def update(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        """Atomically replace the state under `key` by `change(state)[0]` (None deletes it)
        and return `change(state)[1]`; `ttl` overrides the store's default for this write."""
        if self._use_redis():
            try:
                decision = self._update(self.prefix + key, change, ttl)
            except RedisError as error:
                self._degrade(error)
            else:
                self._recover()
                return decision
        return self._fallback.update(key, change, ttl=ttl)

    def get(self, key: str) -> State | None:
        """The state under `key`, or None."""
        if self._use_redis():
            try:
                raw = self._get(self.prefix + key)
            except RedisError as error:
                self._degrade(error)
            else:
                self._recover()
                return self._decode(self.prefix + key, raw)
        return self._fallback.get(key)

    # ------------------------------------------------------------------ the rest

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this process keeps its state in memory."""
        return self._degraded

    def add_listener(
        self, *, on_degraded: Listener | None = None, on_recovered: Listener | None = None
    ) -> None:
        """Call `on_degraded(reason)` once when Redis becomes unreachable and
        `on_recovered(url)` once when it is used again. A listener that raises is logged."""
        if on_degraded is not None:
            self._on_degraded.append(on_degraded)
        if on_recovered is not None:
            self._on_recovered.append(on_recovered)

    def keys(self) -> list[str]:
        """The keys under this store's prefix (without it)."""
        if self._use_redis():
            try:
                found = list(self._scan())
            except RedisError as error:
                self._degrade(error)
            else:
                self._recover()
                return found
        return self._fallback.keys()

    def clear(self) -> None:
        """Delete every key under this store's prefix (and the in-memory fallback's)."""
        self._fallback.clear()
        if self._use_redis():
            try:
                names = [self.prefix + key for key in self._scan()]
                if names:
                    self._client.delete(*names)
            except RedisError as error:
                self._degrade(error)
            else:
                self._recover()

    def ttl_of(self, key: str) -> float | None:
        """Seconds until `key` expires in Redis (None: no key, or no expiry)."""
        left = int(self._client.pttl(self.prefix + key))
        return left / 1000 if left >= 0 else None

    def close(self) -> None:
        """Close the connections (the store reconnects if used again)."""
        self._client.close()

    def __repr__(self) -> str:
        mode = " degraded" if self._degraded else ""
        return f"<RedisStore {self.url} prefix={self.prefix!r}{mode}>"

    # ------------------------------------------------------------------ internals

    def _update(self, name: str, change: Change[T], ttl: float | None) -> T:
        lifetime = self.ttl if ttl is None else ttl
        ttl_ms = str(max(int(lifetime * 1000), 1)) if lifetime else "0"
        raw = self._get(name)
        for _ in range(_MAX_CONFLICTS):
            new, decision = change(self._decode(name, raw))
            encoded = b"" if new is None else orjson.dumps(new, option=orjson.OPT_SORT_KEYS)
            if (raw or b"") == encoded:
                return decision  # nothing to write: the read was the atomic step
            present = "0" if raw is None else "1"
            reply = self._cas(keys=[name], args=[present, raw or b"", encoded, ttl_ms])
            if reply[0] == 1:
                return decision
            raw = _as_bytes(reply[1]) if len(reply) > 1 else None
        raise RedisError(f"state: {name!r} changed {_MAX_CONFLICTS} times under one update")

    def _get(self, name: str) -> bytes | None:
        return _as_bytes(self._client.get(name))

    def _decode(self, name: str, raw: bytes | None) -> State | None:
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            from loguru import logger

            logger.warning("qwed_guard state: {} holds no JSON object; treated as empty", name)
            return None
        return value

    def _scan(self) -> Iterator[str]:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"
        for name in self._client.scan_iter(match=pattern, count=500):
            yield name.decode()[len(self.prefix) :]

    def _use_redis(self) -> bool:
        if not self._degraded:
            return True
        with self._lock:
            now = clock.monotonic()
            if now < self._next_probe:
                return False
            # One probe per interval, whichever thread gets here first.
            self._next_probe = now + self.probe_interval
            return True

    def _degrade(self, error: RedisError) -> None:
        with self._lock:
            self._next_probe = clock.monotonic() + self.probe_interval
            if self._degraded:
                return
            self._degraded = True
        reason = scrub(f"Redis at {self.url} unreachable: {type(error).__name__}: {error}")
        from loguru import logger

        logger.warning(
            "qwed_guard state: {}; keeping state in this process until it returns "
            "(retried every {:g} s)",
            reason,
            self.probe_interval,
        )
        self._notify(self._on_degraded, reason)
        if _hooks.listeners:
            _hooks.emit(_hooks.StoreDegraded("redis", True, reason))

    def _recover(self) -> None:
        if not self._degraded:
            return
        with self._lock:
            if not self._degraded:
                return
            self._degraded = False
            self._fallback.clear()
        from loguru import logger

        logger.info("qwed_guard state: Redis at {} reachable again; shared state in use", self.url)
        self._notify(self._on_recovered, self.url)
        if _hooks.listeners:
            _hooks.emit(_hooks.StoreDegraded("redis", False, "reachable again"))

    def _notify(self, listeners: list[Listener], text: str) -> None:
        for listener in list(listeners):
            try:
                listener(text)
            except Exception:
                from loguru import logger

                logger.exception("qwed_guard state: a degradation listener raised")


_shared: dict[str, RedisStore] = {}
_shared_lock = threading.Lock()


def redis_store(url: str, **options: Any) -> RedisStore:
    """The process's one `RedisStore` for `url` (one connection pool, one degradation notice),
    built on first use; `options` are `RedisStore` keyword arguments, used on first use only."""
    with _shared_lock:
        store = _shared.get(url)
        if store is None:
            store = _shared[url] = RedisStore(url, **options)
        return store
