"""Audit records, schema v2: their canonical JSON, their hash chain and their field values.

A record is a JSON object (see `FIELDS`). Its `hash` is
`sha256(prev_hash + canonical_json(record without "hash"))` in lowercase hex, where the canonical
form is RFC 8785 (JCS), so any language can re-verify a trail. Records hold no floats: durations
and waits are integer microseconds (`duration_us`, `wait_us`) and float values (`value`,
`confidence`, event data) are stored as their shortest round-trip decimal string (`"0.95"`).
With only strings, safe integers, booleans, null, arrays and objects with ASCII keys, orjson's
sorted output *is* the RFC 8785 form (a property test holds it to the `rfc8785` encoder); any
other record goes through `rfc8785` itself.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from qwed_guard._version import __version__
from qwed_guard.audit.key import Key, record_sig
from qwed_guard.redact import may_hold_secret
from qwed_guard.redact import scrub as _scrub

__all__ = [
    "FIELDS",
    "GENESIS",
    "SCHEMA",
    "SCHEMAS",
    "Record",
    "attempts_in",
    "canonical",
    "inline_attempt",
    "jsonable",
    "rfc3339",
    "seal",
    "versions",
]

SCHEMA = 2
"""The schema of the records written now. v2: the call record carries its answered attempt inline
(`answered`) instead of a separate attempt record before it; v1 trails read and verify alike."""
SCHEMAS = frozenset({1, 2})
"""The schemas a reader accepts; one trail may hold both (a v1 file continued by a v2 writer)."""
GENESIS = "0" * 64
"""The `prev_hash` of the first record of a trail."""

MAX_SAFE_INT = 2**53 - 1
"""Larger integers are not exact in every JSON reader (RFC 8785 refuses them): stored as text."""

FIELDS: dict[str, str] = {
    "v": "schema version (2; 1 in older trails, which had no `answered`)",
    "seq": "position in the chain, from 1, continuous across processes and rotated files",
    "id": "record id: '<call_id>/a<n>' for attempts, '<call_id>/call' for calls",
    "ts": "UTC time the record was made, RFC 3339 with microseconds and 'Z'",
    "call_id": "the guarded call this record belongs to",
    "event": "'attempt' (a failed attempt: transient, refuted, ... or raised), 'call', "
    "'checkpoint', 'repair', 'genesis' or 'prune'",
    "attempt": "attempt number (attempt records) or number of attempts made (call records)",
    "function": "the guarded function's qualified name",
    "query": "the query argument (scrubbed; 'hmac-sha256:<key id>:<hex>' with redact='hmac')",
    "outcome": "verified, refuted, unverifiable, transient, permanent or short_circuited",
    "verified": "the result's `verified` flag (false for a fallback or a raised call)",
    "value": "the result's value (floats as decimal strings)",
    "confidence": "the result's confidence as a decimal string",
    "error": "the error text, secrets scrubbed",
    "status": "HTTP status behind a failed attempt, when the guarded client saw it",
    "duration_us": "how long the attempt or the whole call took, integer microseconds",
    "wait_us": "how long retry waited before this attempt, integer microseconds",
    "reused": "attempt records, only when non-zero: HTTP replies taken from an earlier attempt "
    "instead of asking again (guarded_client after a transient failure)",
    "source": "call records: 'verified', 'fallback', 'unverified' (returned unverified) or null "
    "(raised)",
    "reason": "call records: why the fallback was used or why retry gave up",
    "exception": "call records: the exception type the call raised, if any",
    "events": "call records: other things layers reported (breaker changes, alerts, ...)",
    "answered": "call records (v2): the last attempt when it answered (verified or unchecked, "
    "not raised), inline instead of an attempt record of its own: an object with that "
    "attempt's `attempt`, `outcome`, `verified`, `value`, `confidence`, `error`, `status`, "
    "`duration_us`, `wait_us` (and `reused`, `attestation` when it had them); null when no "
    "attempt answered",
    "context": "audit_context(...) fields merged with the decorator's context=",
    "policy": "hash of the policy the guard was built from, if any",
    "traceparent": "the call's W3C trace context ('00-<trace id>-<span id>-<flags>'), only "
    "when tracing is on",
    "qwed": "installed qwed version",
    "qwed_guard": "installed qwed_guard version",
    "prev_hash": "hash of the previous record ('0' * 64 for the first)",
    "hash": "sha256(prev_hash + RFC 8785 JSON of the record without 'hash' and 'sig' + sig)",
    "sig": "keyed trails: HMAC-SHA256 of the RFC 8785 JSON of the record without 'hash' and "
    "'sig' (the hash covers it)",
}


_CALL_ONLY = frozenset(
    (
        "events",
        "source",
        "reason",
        "exception",
        "answered",
        "attestation",
        "prev_hash",
        "sig",
        "hash",
    )
)


def inline_attempt(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A v2 call record's answered attempt (`answered`) as the attempt record v1 wrote before
    it, or None: the call's shared fields, its seq, the attempt's own fields and its id. A view
    for readers (show, stats, checks), not a record of the chain."""
    inline = record.get("answered")
    if record.get("event") != "call" or not isinstance(inline, dict):
        return None
    view = {k: v for k, v in record.items() if k not in _CALL_ONLY}
    view.update(inline)
    view["event"] = "attempt"
    view["id"] = f"{record.get('call_id')}/a{inline.get('attempt')}"
    return view


def attempts_in(records: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every attempt `records` hold, in trail order: attempt records (v1 and v2) and each v2
    call record's answered attempt (`inline_attempt`) in the call's place."""
    for record in records:
        event = record.get("event")
        if event == "attempt":
            yield record
        elif event == "call":
            inline = inline_attempt(record)
            if inline is not None:
                yield inline


class Record(dict[str, Any]):
    """A record as the audit layer builds it: a dict whose values are plain JSON data already
    (str, safe int, bool, None, and lists and str-keyed dicts of those; no floats).

    Sealing trusts that and skips the type walk every other dict goes through. Whoever changes
    a Record's values (a redactor) hands on a plain `dict` instead.
    """

    __slots__ = ()


def _simple(obj: Any) -> bool:
    """True when orjson's sorted output equals RFC 8785 for `obj`."""
    kind = type(obj)
    if kind is str or kind is bool or obj is None:
        return True
    if kind is int:
        return bool(-MAX_SAFE_INT <= obj <= MAX_SAFE_INT)
    if kind is dict or kind is Record:
        for key, value in obj.items():
            if type(key) is not str or not key.isascii() or not _simple(value):
                return False
        return True
    if kind is list:
        return all(_simple(value) for value in obj)
    return False


def _ascii_keys(mapping: Mapping[str, Any]) -> bool:
    return all(map(str.isascii, mapping))


def _ascii_keys_within(values: Any) -> bool:
    """True when every dict inside `values` (at any depth) has only ASCII keys."""
    for value in values:
        kind = type(value)
        if kind is dict:
            if value and not (_ascii_keys(value) and _ascii_keys_within(value.values())):
                return False
        elif kind is list and value and not _ascii_keys_within(value):
            return False
    return True


_SCALARS = frozenset({str, int, bool, type(None)})
_PLAIN = _SCALARS | {dict, list}


def _plain_types(values: Any) -> bool:
    """True when `values` hold only str/int/bool/None and dicts/lists of those (recursively).

    The cheap half of `_simple`, run in C over each container: key types and ASCII-ness and
    integer ranges are left to the strict orjson call that follows it.
    """
    kinds = set(map(type, values))
    if kinds <= _SCALARS:
        return True
    if not kinds <= _PLAIN:
        return False
    for value in values:
        kind = type(value)
        if kind is dict:
            if not _plain_types(value.values()):
                return False
        elif kind is list and not _plain_types(value):
            return False
    return True


_sorted_dumps: Callable[[Any], bytes] | None = None
_strict_dumps: Callable[[Any], bytes] | None = None
_record_dumps: Callable[[Any], bytes] | None = None


def _load_orjson() -> Callable[[Any], bytes]:
    # Imported on first use: orjson costs about 10 ms at `import qwed_guard` otherwise.
    global _sorted_dumps, _strict_dumps, _record_dumps
    import orjson

    option = orjson.OPT_SORT_KEYS
    # A Record's values are plain already; strict integers still guard the 2**53 limit.
    record_option = option | orjson.OPT_STRICT_INTEGER
    # Refuses (TypeError) integers beyond 2**53, non-str keys and str/int subclasses: what
    # RFC 8785 and `_simple` do not accept as plain JSON.
    strict = (
        option
        | orjson.OPT_STRICT_INTEGER
        | orjson.OPT_PASSTHROUGH_SUBCLASS
        | orjson.OPT_PASSTHROUGH_DATACLASS
        | orjson.OPT_PASSTHROUGH_DATETIME
    )

    # Partials: called from C, without a Python frame of their own.
    dumps = partial(orjson.dumps, option=option)
    _sorted_dumps = dumps
    _strict_dumps = partial(orjson.dumps, option=strict)
    _record_dumps = partial(orjson.dumps, option=record_option)
    return dumps


def canonical(record: Mapping[str, Any]) -> bytes:
    """The RFC 8785 (JCS) bytes of `record`: orjson when that is provably the same, else rfc8785."""
    kind = type(record)
    if _record_dumps is None:
        _load_orjson()
    if kind is Record:  # the audit layer's own records: the fast path at once
        assert _record_dumps is not None
        try:
            body = _record_dumps(record)
        except TypeError:
            pass
        else:
            # Its own keys are ASCII; the dicts inside it may hold a user's keys.
            if body.isascii() or _ascii_keys_within(record.values()):
                return body
    elif kind is dict and _plain_types(record.values()):
        # The fast path, same bytes as below: the type walk plus orjson's strict mode refuse
        # everything `_simple` refuses except non-ASCII keys, which only non-ASCII output holds.
        assert _strict_dumps is not None
        try:
            body = _strict_dumps(record)
        except TypeError:
            pass
        else:
            # Non-ASCII text sorts and escapes alike in both; only a non-ASCII key could be
            # ordered differently (RFC 8785 compares UTF-16 code units).
            if body.isascii() or (_ascii_keys(record) and _ascii_keys_within(record.values())):
                return body
    if _simple(record):
        dumps = _sorted_dumps or _load_orjson()
        try:
            return dumps(record)
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate is not UTF-8 encodable
            return dumps(_without_surrogates(record))
    import rfc8785  # only for records with floats, non-ASCII keys or other exotic content

    plain = dict(record) if type(record) is Record else record
    try:
        return rfc8785.dumps(plain)
    except rfc8785.CanonicalizationError:  # a lone surrogate (or what fails again below)
        return rfc8785.dumps(_without_surrogates(plain))


def _without_surrogates(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.encode("utf-8", "replace").decode("utf-8")
    if isinstance(obj, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_surrogates(v) for v in obj]
    return obj


def chain_hash(prev_hash: str, body: bytes, sig: str | None = None) -> str:
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(body)  # not `prev + body`: no copy of the record's bytes
    if sig is not None:
        digest.update(sig.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def seal(
    record: dict[str, Any], seq: int, prev_hash: str, key: Key | None = None
) -> tuple[bytes, str]:
    """Give `record` its place in the chain; return its JSONL line and its hash.

    Sets `seq`, `prev_hash` and `hash` on `record` (and, with a key, `sig`: the HMAC of the
    canonical body, which the hash then covers). The line is the canonical body with `hash`
    (and `sig`) appended, so it is valid JSON; verifiers recompute the canonical form, not the
    line's bytes.
    """
    record.pop("hash", None)
    record.pop("sig", None)
    record["seq"] = seq
    record["prev_hash"] = prev_hash
    body = canonical(record)
    if key is None:
        hasher = hashlib.sha256(prev_hash.encode("ascii"))  # chain_hash without a sig
        hasher.update(body)
        digest = hasher.hexdigest()
        record["hash"] = digest
        return b"".join((body[:-1], b',"hash":"', digest.encode("ascii"), b'"}\n')), digest
    sig = record_sig(key, body)
    digest = chain_hash(prev_hash, body, sig)
    record["sig"], record["hash"] = sig, digest
    tail = b',"hash":"' + digest.encode("ascii") + b'","sig":"' + sig.encode("ascii") + b'"}\n'
    return body[:-1] + tail, digest


def record_hash(record: Mapping[str, Any]) -> str:
    """Recompute a parsed record's hash from its content, its `prev_hash` and its `sig`."""
    body = {k: v for k, v in record.items() if k != "hash" and k != "sig"}
    prev = body.get("prev_hash")
    sig = record.get("sig")
    if sig is not None and not isinstance(sig, str):
        sig = repr(sig)  # not what a writer writes: it cannot match
    return chain_hash(prev if isinstance(prev, str) else "", canonical(body), sig)


_second_box: list[tuple[int, str]] = [(-1, "")]


def rfc3339(wall: float, _box: list[tuple[int, str]] = _second_box) -> str:
    """`2026-01-01T00:00:00.000000Z` for epoch seconds `wall` (UTC)."""
    second = int(wall)
    cached = _box[0]
    if cached[0] != second:  # the date part changes once a second: format it once
        cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _box[0] = cached
    return "%s.%06dZ" % (cached[1], (wall - second) * 1_000_000)  # noqa: UP031 - fastest


def micros(seconds: float) -> int:
    """Seconds as integer microseconds (records hold no floats)."""
    return round(seconds * 1_000_000)


def float_text(value: float) -> str:
    """A float as its shortest round-trip decimal string: 0.95 -> "0.95"."""
    return repr(value)


def scrub(text: str) -> str:
    """`redact.scrub`, skipped for text that cannot hold any of the secrets it removes
    (checking is about twenty times cheaper than the patterns, and most audited text has none).
    """
    return _scrub(text) if may_hold_secret(text) else text


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as hashed-record data: scrubbed strings, safe ints, no floats, str keys."""
    kind = type(value)
    if kind is str:
        return scrub(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if kind is float:
        return float_text(value)
    try:
        return _structured(value, depth)
    except Exception as exc:  # a value that cannot even be read is recorded as what it is
        return _unreadable(value, exc)


def safe_repr(value: Any) -> str:
    """`repr(value)`, or what the value is when its `__repr__` raises."""
    try:
        return repr(value)
    except Exception as exc:
        return _unreadable(value, exc)


def _unreadable(value: Any, exc: Exception) -> str:
    return f"<{type(value).__name__}: unreadable, {type(exc).__name__}>"


def _structured(value: Any, depth: int) -> Any:
    """`jsonable` of anything but a plain scalar (which may raise: `jsonable` catches it)."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value, depth)
    if depth >= 8:
        return scrub(repr(value))
    if isinstance(value, Mapping):
        return {scrub(str(k)): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v, depth + 1) for v in value), key=repr)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return jsonable(int(value), depth)
    if isinstance(value, float):
        return float_text(float(value))
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # An event's Alert (or any dataclass) as its fields, which any reader can parse, not
        # as its Python repr.
        fields = dataclasses.fields(value)
        return {f.name: jsonable(getattr(value, f.name), depth + 1) for f in fields}
    return scrub(str(value))


_versions: tuple[str | None, str | None] | None = None


def versions() -> tuple[str | None, str | None]:
    """(qwed, qwed_guard) installed versions, looked up once."""
    global _versions
    if _versions is None:
        from importlib import metadata

        def lookup(name: str) -> str | None:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                return None

        _versions = (lookup("qwed"), lookup("qwed-guard") or __version__)
    return _versions
