"""Guard state shared by every worker process, in Redis.

    from qwed_guard import circuit_breaker
    @circuit_breaker(failure_threshold=5, state="redis://127.0.0.1:6379/0")

`RedisStore` implements the `StateStore` protocol of `qwed_guard.state`: each `update` reads the
JSON value under the key, runs the pure `change` on it, and writes the result back with a
compare-and-set Lua script that succeeds only if the value is still the one read; otherwise it
runs `change` again on the fresh value. So N processes updating one key behave as one process.
A change that leaves the value as it was costs one GET and no write.

`async def` code awaits the same operations on `redis.asyncio` (`aupdate`, `aget`, `aview`): one
client per event loop, never a blocking call on the loop.

The success path costs at most one round trip per guarded call. The store keeps a *view* of the
keys it read recently: `view(key, max_age)` answers from it when it is at most `max_age` seconds
old, and otherwise runs one Lua script that records the pending counter increments (`add`: a
breaker's success count) and reads the key *and the other keys used in the last second* (the
alerter's key of the same call). The layers ask for a view read during the call itself, or at
most `cache` seconds old (`?cache=0.05`; default 0); async tasks wanting the same key at once
share one read in flight. With a cache a breaker opened by another
process is seen up to `cache` seconds late, and a success can leave another process's failure
streak unreset for as long. Changes (a failure, a transition) always go through the atomic
compare-and-set.

Keys live under a prefix (`qwed_guard:` by default) and expire `ttl` seconds (7 days by default)
after their last write, so state of retired functions does not pile up.

When Redis cannot be reached the guarded call goes on: the store switches to a private in-memory
store, logs the degradation once, calls the `on_degraded` listeners once, and tries Redis again
at most every `probe_interval` seconds; the first success switches back (the in-memory state of
the outage is dropped: the shared state wins) and calls `on_recovered`.

URL forms: `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS), with `${VAR}`
expanded from the environment (`redis://:${REDIS_PASSWORD}@cache:6379/0`) so a policy file
needs no secret, and the store's own options as query parameters:
`?prefix=app:&ttl=3600&probe_interval=5&cache=0.05`.
Any other query parameter goes to redis-py (`socket_timeout=...`). The URL is logged and shown
only without its credentials.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from qwed_guard import clock
from qwed_guard import hooks as _hooks
from qwed_guard.outcomes import scrub
from qwed_guard.state.base import Change, State
from qwed_guard.state.memory import MemoryStore
from qwed_guard.urls import display_url, split_url

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript, Script

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

# One round trip for the success path: add the pending increments to the counters (the KEYS
# after the first ARGV[1]; from ARGV[2], an amount and a lifetime in ms, none when 0, for
# each), then read the first ARGV[1] keys.
_FETCH = """
local n = tonumber(ARGV[1])
for j = n + 1, #KEYS do
  local at = 2 + 2 * (j - n - 1)
  redis.call('INCRBY', KEYS[j], ARGV[at])
  if ARGV[at + 1] ~= '0' then
    redis.call('PEXPIRE', KEYS[j], ARGV[at + 1])
  end
end
local out = {}
for i = 1, n do
  out[i] = redis.call('GET', KEYS[i])
end
return out
"""
_COUNTER = "#"
"""Counters live under `<prefix>#<name>`: apart from the JSON states `keys()` lists."""
_HOT = 1.0
"""Keys used within this many seconds are read again with every refresh (at most `_HOT_KEYS`)."""
_HOT_KEYS = 32

_OWN_OPTIONS = ("prefix", "ttl", "probe_interval", "cache")

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


def _counter_values(raws: list[Any], count: int) -> list[int]:
    """The first `count` replies of the fetch script, as counter values (a missing one is 0)."""
    values = [_as_bytes(raw) for raw in raws]
    values += [None] * (count - len(values))
    return [int(raw) if raw else 0 for raw in values[:count]]


class RedisStore:
    """A `StateStore` in Redis, shared by every process that uses the same URL and prefix.

    `ttl` (seconds, None for never) is the default lifetime of a key after its last write.
    `connect_timeout` and `timeout` bound how long a call can wait on an unreachable or stuck
    Redis: at most one such wait per `probe_interval` while degraded. `cache` (seconds) is how
    old the local view may be for a success-path decision (0: read during the call).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float | None = DEFAULT_TTL,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        cache: float = 0.0,
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
        if "cache" in own:
            cache = _number("cache", own["cache"], 0)
        self.url = display_url(url)
        """The URL without credentials, for logs and reprs."""
        self.prefix = prefix
        self.ttl = ttl
        self.probe_interval = float(probe_interval)
        self.cache = float(cache)
        """Seconds a view may be old for a success-path decision."""
        self._full = urlunsplit(parts._replace(query=urlencode(rest)))
        self._timeouts = (connect_timeout, timeout)
        # No redis-py retries: they sleep for real, and this store copes on its own. (A pooled
        # connection that died with a restarted server is replaced when it is checked out.)
        self._client: redis.Redis = redis.Redis.from_url(
            self._full,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._cas: Script = self._client.register_script(_CAS)
        self._fetch: Script = self._client.register_script(_FETCH)
        # redis.asyncio connections belong to the loop that made them: one client per loop.
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[aioredis.Redis, AsyncScript, AsyncScript]
        ] = weakref.WeakKeyDictionary()
        self._flights: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Future[State | None]]
        ] = weakref.WeakKeyDictionary()
        self._async_locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        self._key_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._fallback = MemoryStore()
        self._degraded = False
        self.outages = 0
        """How many times Redis became unreachable (a counter for dashboards)."""
        self._next_probe = 0.0
        self._views: dict[str, tuple[float, State | None]] = {}
        self._raws: dict[str, bytes | None] = {}
        self._used: dict[str, float] = {}
        self._pending: dict[str, tuple[int, str]] = {}
        self._on_degraded: list[Listener] = []
        self._on_recovered: list[Listener] = []
        self.add_listener(on_degraded=on_degraded, on_recovered=on_recovered)
        atexit.register(_flush_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ StateStore

    def update(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        """Atomically replace the state under `key` by `change(state)[0]` (None deletes it)
        and return `change(state)[1]`; `ttl` overrides the store's default for this write."""
        if self._use_redis():
            try:
                decision = self._update(key, change, ttl)
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

    async def aupdate(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        """`update` on `redis.asyncio`: the event loop runs other tasks meanwhile."""
        if self._use_redis():
            try:
                decision = await self._aupdate(key, change, ttl)
            except RedisError as error:
                self._degrade(error)
            else:
                self._recover()
                return decision
        return self._fallback.update(key, change, ttl=ttl)

    async def aget(self, key: str) -> State | None:
        """`get` on `redis.asyncio`."""
        if self._use_redis():
            try:
                client = self._async_client()[0]
                raw = _as_bytes(await client.get(self.prefix + key))
            except RedisError as error:
                self._degrade(error)
            else:
                self._recover()
                return self._decode(self.prefix + key, raw)
        return self._fallback.get(key)

    # ------------------------------------------------------------------ the view

    def cached(self, key: str, max_age: float) -> tuple[bool, State | None]:
        """(True, state) when the view of `key` is at most `max_age` seconds old (or Redis is
        out and no probe is due: the local state), with no I/O; else (False, None)."""
        if self._degraded:
            if clock.monotonic() < self._next_probe:
                return True, self._fallback.peek(key)
            return False, None
        entry = self._views.get(key)
        if entry is not None:
            now = time.monotonic()
            if now - entry[0] <= max_age:
                self._used[key] = now
                return True, entry[1]
        return False, None

    def view(self, key: str, max_age: float) -> State | None:
        """The state under `key`, read at most `max_age` seconds ago: from the view, or read
        now together with the other recently used keys and the pending counter increments."""
        hit, state = self.cached(key, max_age)
        if hit:
            return state
        if self._use_redis():
            names, counters, tail = self._refresh_args(key)
            try:
                raws = self._fetch(keys=names + counters, args=[len(names), *tail])
            except RedisError as error:
                self._unpend(counters, tail)
                self._degrade(error)
            else:
                self._recover()
                return self._refreshed(key, names, raws)
        return self._fallback.peek(key)

    async def aview(self, key: str, max_age: float) -> State | None:
        """`view` on `redis.asyncio`. Tasks that need the same key at once share one read: the
        first sends it, the others wait for its answer (so 100 tasks cost one round trip)."""
        hit, state = self.cached(key, max_age)
        if hit:
            return state
        flights = self._flights.get(asyncio.get_running_loop())
        if flights is None:
            flights = self._flights[asyncio.get_running_loop()] = {}
        flight = flights.get(key)
        if flight is not None:
            try:
                return await asyncio.shield(flight)
            except asyncio.CancelledError:
                if not flight.cancelled():
                    raise  # this task is being cancelled
                # The task that read for everyone was cancelled: read here instead.
        flight = flights[key] = asyncio.get_running_loop().create_future()
        try:
            state = await self._aread(key)
        except BaseException:
            flight.cancel()
            raise
        finally:
            if flights.get(key) is flight:
                del flights[key]
        flight.set_result(state)
        return state

    async def _aread(self, key: str) -> State | None:
        if self._use_redis():
            names, counters, tail = self._refresh_args(key)
            try:
                script = self._async_client()[2]
                raws = await script(keys=names + counters, args=[len(names), *tail])
            except RedisError as error:
                self._unpend(counters, tail)
                self._degrade(error)
            else:
                self._recover()
                return self._refreshed(key, names, raws)
        return self._fallback.peek(key)

    def add(self, counter: str, amount: int, *, ttl: float | None = None) -> None:
        """Add `amount` to `counter` with the next round trip (no I/O now); the counter expires
        `ttl` seconds (default: the store's) after its last change."""
        if self._degraded:
            self._fallback.add(counter, amount)
            return
        lifetime = self._ttl_ms(ttl)
        with self._lock:
            before = self._pending.get(counter)
            self._pending[counter] = ((before[0] if before else 0) + amount, lifetime)

    def count(self, counter: str) -> int:
        """The value of `counter`, pending increments included (one round trip)."""
        return self.counts([counter])[0]

    def counts(self, counters: list[str]) -> list[int]:
        """The values of `counters`, pending increments included, in one round trip."""
        if self._use_redis():
            names = [self.prefix + _COUNTER + counter for counter in counters]
            _, pending, tail = self._refresh_args(None)
            try:
                raws = self._fetch(keys=names + pending, args=[len(names), *tail])
            except RedisError as error:
                self._unpend(pending, tail)
                self._degrade(error)
            else:
                self._recover()
                return _counter_values(raws, len(names))
        return [self._fallback.count(counter) for counter in counters]

    async def acounts(self, counters: list[str]) -> list[int]:
        """`counts` on `redis.asyncio`."""
        if self._use_redis():
            names = [self.prefix + _COUNTER + counter for counter in counters]
            _, pending, tail = self._refresh_args(None)
            try:
                script = self._async_client()[2]
                raws = await script(keys=names + pending, args=[len(names), *tail])
            except RedisError as error:
                self._unpend(pending, tail)
                self._degrade(error)
            else:
                self._recover()
                return _counter_values(raws, len(names))
        return [self._fallback.count(counter) for counter in counters]

    def flush(self) -> None:
        """Send the pending counter increments now."""
        if not self._pending or not self._use_redis():
            return
        _, counters, tail = self._refresh_args(None)
        try:
            self._fetch(keys=counters, args=[0, *tail])
        except RedisError as error:
            self._unpend(counters, tail)
            self._degrade(error)
        else:
            self._recover()

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
        """The keys under this store's prefix (without it; counters not included)."""
        if self._use_redis():
            try:
                found = [key for key in self._scan() if not key.startswith(_COUNTER)]
            except RedisError as error:
                self._degrade(error)
            else:
                self._recover()
                return found
        return self._fallback.keys()

    def clear(self) -> None:
        """Delete every key under this store's prefix (and the in-memory fallback's)."""
        self._fallback.clear()
        self._views.clear()
        self._raws.clear()
        with self._lock:
            self._pending.clear()
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
        """Send what is pending and close the connections (the store reconnects if used)."""
        self.flush()
        self._client.close()

    def __repr__(self) -> str:
        mode = " degraded" if self._degraded else ""
        return f"<RedisStore {self.url} prefix={self.prefix!r}{mode}>"

    # ------------------------------------------------------------------ internals

    def _ttl_ms(self, ttl: float | None = None) -> str:
        lifetime = self.ttl if ttl is None else ttl
        return str(max(int(lifetime * 1000), 1)) if lifetime else "0"

    def _async_client(self) -> tuple[aioredis.Redis, AsyncScript, AsyncScript]:
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            connect_timeout, timeout = self._timeouts
            client = aioredis.Redis.from_url(
                self._full,
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                # One retry on a dropped connection: a pooled connection that died with a
                # restarted server is replaced rather than taken for an outage.
                retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            found = (client, client.register_script(_CAS), client.register_script(_FETCH))
            self._async[loop] = found
        return found

    def _refresh_args(self, key: str | None) -> tuple[list[str], list[str], list[int | str]]:
        """The keys a refresh reads (`key` and the other hot ones), the counters it adds to and
        the script arguments for those (amount, lifetime, ...), taken out of `_pending`
        (`_unpend` keeps them in memory if the trip fails)."""
        names: list[str] = []
        if key is not None:
            now = time.monotonic()
            hot = [k for k, used in list(self._used.items()) if now - used <= _HOT and k != key]
            names = [key, *hot[: _HOT_KEYS - 1]]
            self._used[key] = now
        counters: list[str] = []
        tail: list[int | str] = []
        if self._pending:
            with self._lock:
                pending, self._pending = self._pending, {}
            for counter, (amount, lifetime) in pending.items():
                counters.append(self.prefix + _COUNTER + counter)
                tail += [amount, lifetime]
        return [self.prefix + name for name in names], counters, tail

    def _unpend(self, counters: list[str], tail: list[int | str]) -> None:
        # The trip failed: the increments count in this process's memory (as everything does
        # while Redis is out), so nothing is lost and nothing is sent twice.
        skip = len(self.prefix + _COUNTER)
        for counter, amount in zip(counters, tail[::2], strict=True):
            self._fallback.add(counter[skip:], int(amount))

    def _refreshed(self, key: str, names: list[str], raws: Any) -> State | None:
        now = time.monotonic()
        skip = len(self.prefix)
        wanted: State | None = None
        for name, raw in zip(names, raws, strict=False):
            value = _as_bytes(raw)
            state = self._decode(name, value)
            self._views[name[skip:]] = (now, state)
            self._raws[name[skip:]] = value
            if name[skip:] == key:
                wanted = state
        return wanted

    def _update(self, key: str, change: Change[T], ttl: float | None) -> T:
        # Threads of one process updating one key take turns: only other processes' writes
        # can make a compare-and-set lose, not this process's own.
        with self._key_lock(key):
            return self._update_now(key, change, ttl)

    def _key_lock(self, key: str) -> threading.Lock:
        lock = self._key_locks.get(key)
        if lock is None:
            with self._lock:
                lock = self._key_locks.setdefault(key, threading.Lock())
        return lock

    def _update_now(self, key: str, change: Change[T], ttl: float | None) -> T:
        name = self.prefix + key
        ttl_ms = self._ttl_ms(ttl)
        # Start from the value this process saw last, if any: a compare-and-set that finds it
        # changed answers with the current value, so a stale start costs no extra trip, and a
        # current one saves the GET. Deciding to write nothing needs a value read now.
        verified = key not in self._raws
        raw = self._get(name) if verified else self._raws[key]
        for _ in range(_MAX_CONFLICTS):
            current = self._decode(name, raw)
            new, decision = change(current)
            encoded = b"" if new is None else orjson.dumps(new, option=orjson.OPT_SORT_KEYS)
            if (raw or b"") == encoded and not verified:
                raw, verified = self._get(name), True
                continue
            if (raw or b"") == encoded:
                self._raws[key] = raw
                self._views[key] = (time.monotonic(), current)
                return decision  # nothing to write: the read was the atomic step
            present = "0" if raw is None else "1"
            reply = self._cas(keys=[name], args=[present, raw or b"", encoded, ttl_ms])
            if reply[0] == 1:
                self._views[key] = (time.monotonic(), new)
                self._raws[key] = encoded or None
                return decision
            raw, verified = (_as_bytes(reply[1]) if len(reply) > 1 else None), True
        raise RedisError(f"state: {name!r} changed {_MAX_CONFLICTS} times under one update")

    async def _aupdate(self, key: str, change: Change[T], ttl: float | None) -> T:
        # Tasks of one loop updating one key take turns, as threads do.
        locks = self._async_locks.get(asyncio.get_running_loop())
        if locks is None:
            locks = self._async_locks[asyncio.get_running_loop()] = {}
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        async with lock:
            return await self._aupdate_now(key, change, ttl)

    async def _aupdate_now(self, key: str, change: Change[T], ttl: float | None) -> T:
        client, cas, _ = self._async_client()
        name = self.prefix + key
        ttl_ms = self._ttl_ms(ttl)
        # Start from the value this process saw last, if any: a compare-and-set that finds it
        # changed answers with the current value, so a stale start costs no extra trip, and a
        # current one saves the GET. Deciding to write nothing needs a value read now.
        verified = key not in self._raws
        raw = _as_bytes(await client.get(name)) if verified else self._raws[key]
        for _ in range(_MAX_CONFLICTS):
            current = self._decode(name, raw)
            new, decision = change(current)
            encoded = b"" if new is None else orjson.dumps(new, option=orjson.OPT_SORT_KEYS)
            if (raw or b"") == encoded and not verified:
                raw, verified = _as_bytes(await client.get(name)), True
                continue
            if (raw or b"") == encoded:
                self._raws[key] = raw
                self._views[key] = (time.monotonic(), current)
                return decision
            present = "0" if raw is None else "1"
            reply = await cas(keys=[name], args=[present, raw or b"", encoded, ttl_ms])
            if reply[0] == 1:
                self._views[key] = (time.monotonic(), new)
                self._raws[key] = encoded or None
                return decision
            raw, verified = (_as_bytes(reply[1]) if len(reply) > 1 else None), True
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
            self.outages += 1
            self._views.clear()
            self._raws.clear()
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


def _flush_at_exit(ref: weakref.ReferenceType[RedisStore]) -> None:
    # The last counts go out with the process; quietly: logging may be gone by now.
    store = ref()
    if store is None or store.degraded or not store._pending:
        return
    _, counters, tail = store._refresh_args(None)
    with contextlib.suppress(Exception):
        store._fetch(keys=counters, args=[0, *tail])


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
