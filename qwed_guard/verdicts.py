"""One verdict table: which results count as verified, for every result shape QWED returns.

Every layer (retry, breaker, alerts, fallback, audit) reads the verdict decided here, once per
attempt. The rule is fail-closed: only an answer QWED itself admitted is verified.

- QWEDLocal's `VerificationResult`: verified when `verified is True`; otherwise refuted (no
  error) or what its error text says.
- the hosted `qwed_sdk.models.VerificationResult`: verified when `is_verified` and QWED's own
  `is_admitted` agree; otherwise by status, admission and error.
- `BatchResult`: verified when every item is admitted; otherwise the failed items are named.
- mappings and objects carrying `verified` or `is_verified`: as the two above.
- `None` is unverifiable, `False` refuted; other plain values (`True`, numbers, text,
  containers) are `unchecked` (`plain="pass"`) or unverifiable (`plain="fail"`): never verified.
- any other type: unverifiable and final, saying so, unless registered (`register_verdict`).

A refusal by a deterministic check (code, SQL, config, shell, file access, QWED's rule-based
routes) is *final*: asking again gives the same answer, so retry stops and the breaker does not
count it. Re-asking only helps where an LLM produced the answer.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib
import json
import math
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from qwed_guard import clock
from qwed_guard.errors import bad_parameter
from qwed_guard.options import STRING, Why, check, choice, data, declared, flag, function
from qwed_guard.outcomes import (
    Classifier,
    Diagnosis,
    Outcome,
    WireFailure,
    diagnose_exception,
    error_text_diagnosis,
    scrub,
)

__all__ = [
    "Answer",
    "Judge",
    "VerdictRules",
    "answer_of",
    "attestation_summary",
    "diagnose",
    "register_verdict",
    "unregister_verdict",
]

Judge = Callable[[Any], "Outcome | Diagnosis | bool"]
"""A user verdict: takes a result, returns an Outcome, a Diagnosis, or a bool (verified or not)."""

PlainRule = Literal["pass", "fail"]

_VERIFIED = Diagnosis(Outcome.VERIFIED)
_UNCHECKED = Diagnosis(Outcome.UNCHECKED)
# Enum members looked up once: `Outcome.X` is an attribute lookup on every judged result.
_OUTCOME_VERIFIED, _OUTCOME_UNCHECKED = Outcome.VERIFIED, Outcome.UNCHECKED

# QWEDLocal methods and hosted routes that never ask an LLM: the same input, the same verdict.
DETERMINISTIC_METHODS: frozenset[str] = frozenset(
    {
        "verify_code",
        "verify_sql",
        "verify_config",
        "verify_shell_command",
        "verify_file_access",
        "verify_fact",
        "verify_batch",
        "verify_stats",
        "verify_image",
    }
)
# verify_math is deterministic on the hosted server (SymPy on the given expression) but asks an
# LLM in QWEDLocal; the table below decides it by the result's type.
_HOSTED_DETERMINISTIC = DETERMINISTIC_METHODS | {"verify_math"}
# Keys a hosted response carries when an LLM translated the query (logic, natural language).
_LLM_KEYS = ("provider_used", "model", "dsl_code")
# Where the hosted answer lives in a response, most specific first.
_ANSWER_KEYS = ("final_answer", "answer", "simplified", "result", "is_safe", "is_valid")
_UNREACHABLE = ("server unreachable", "could not be reached", "verification unavailable")


_NO_EVIDENCE: Mapping[str, Any] = MappingProxyType({})
_new_tuple: Callable[..., Any] = tuple.__new__


class Answer(NamedTuple):
    """What a result says, as `GuardedResult` and the audit trail show it (immutable: a
    NamedTuple, read on every call)."""

    value: Any
    confidence: float | None = None
    """What QWED said; None when it said nothing (never a made-up 1.0)."""
    evidence: Mapping[str, Any] = _NO_EVIDENCE
    status: str | None = None
    admission: str | None = None
    attestation: str | None = None


def _finite(value: Any) -> float | None:
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class _Entry:
    judge: Callable[[Any, VerdictRules, WireFailure | None], Diagnosis]
    answer: Callable[[Any], Answer]


_BY_NAME: dict[str, _Entry] = {}
"""QWED's own types, by `module.qualname`: matching by name never imports qwed_sdk."""
_BY_TYPE: dict[type, _Entry] = {}
"""Types users registered."""


def register_verdict(
    cls: type,
    judge: Judge,
    *,
    answer: Callable[[Any], Any] | None = None,
) -> None:
    """Teach every guard how to judge results of type `cls` (and its subclasses).

    `judge(result)` returns an Outcome, a Diagnosis or a bool; `answer(result)` (optional) the
    value a `GuardedResult` carries (default: the result's `value` attribute, else the result).
    A judge that raises or returns anything else makes the attempt unverifiable, never verified.
    """
    if not isinstance(cls, type):
        raise bad_parameter("cls", f"must be a type, got {type(cls).__name__}", wrong_type=True)
    if not callable(judge):
        raise bad_parameter("judge", "must be callable", wrong_type=True)
    if answer is not None and not callable(answer):
        raise bad_parameter("answer", "must be callable", wrong_type=True)

    def read(result: Any) -> Answer:
        if answer is None:
            shape = _mapping_answer if isinstance(result, Mapping) else _object_answer
            return shape(result)
        return Answer(answer(result))

    _BY_TYPE[cls] = _Entry(lambda result, _rules, _wire: _user_verdict(judge, result), read)
    _FOR_CLASS.clear()


def unregister_verdict(cls: type) -> None:
    """Forget a verdict `register_verdict` taught (tests, plug-ins that unload)."""
    _BY_TYPE.pop(cls, None)
    _FOR_CLASS.clear()


_FOR_CLASS: dict[type, _Entry] = {}
"""Each result class's entry, looked up once (cleared when a verdict is registered)."""


def _entry_for(result: Any) -> _Entry:
    cls = type(result)
    try:
        return _FOR_CLASS[cls]
    except KeyError:
        pass
    entry = None
    for klass in cls.__mro__:
        entry = _BY_TYPE.get(klass)
        if entry is not None:
            break
    if entry is None:
        entry = _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
    if entry is None:
        # Shapes nobody registered are read by their structure; whether the class is a
        # Mapping is asked once here, not on every result.
        entry = _MAPPING_SHAPE if issubclass(cls, Mapping) else _OBJECT_SHAPE
    if len(_FOR_CLASS) < 4096:  # classes made on the fly must not grow it without end
        _FOR_CLASS[cls] = entry
    return entry


# ------------------------------------------------------------------------------ QWEDLocal's


def _local_final(result: Any, rules: VerdictRules) -> bool:
    if rules.deterministic is not None:
        return rules.deterministic
    if rules.method is not None:
        return rules.method in DETERMINISTIC_METHODS
    evidence = getattr(result, "evidence", None)
    if isinstance(evidence, Mapping):
        # CodeVerifier's evidence names it; SystemGuard's and ConfigGuard's name a risk.
        return evidence.get("method") == "code_verifier" or "risk" in evidence
    return False


def _contradicted(admission: Any) -> Diagnosis | None:
    """A `verified=True` that QWED's own admission contradicts: the admission wins."""
    if admission is None or admission == "ADMIT":
        return None
    why = f"verified is True but QWED's admission is {admission!r}"
    return Diagnosis(Outcome.UNVERIFIABLE, why, final=True)


def _judge_local(result: Any, rules: VerdictRules, wire: WireFailure | None) -> Diagnosis:
    verified = getattr(result, "verified", None)
    if verified is True:
        evidence = getattr(result, "evidence", None)
        admission = getattr(result, "admission", None)
        if admission is None and (type(evidence) is dict or isinstance(evidence, Mapping)):
            admission = evidence.get("admission")  # QWEDLocal's verify_code keeps it there
        if admission is None or admission == "ADMIT":
            return _VERIFIED
        return _contradicted(admission) or _VERIFIED
    if verified is not False:
        return Diagnosis(
            Outcome.UNVERIFIABLE,
            f"result's verified is {type(verified).__name__}, not a bool",
            final=True,
        )
    error = getattr(result, "error", None)
    final = _local_final(result, rules)
    if not error:
        return Diagnosis(Outcome.REFUTED, final=final)
    diagnosis = error_text_diagnosis(str(error), wire)
    if final and diagnosis.outcome in (Outcome.REFUTED, Outcome.UNVERIFIABLE):
        return Diagnosis(diagnosis.outcome, diagnosis.error, final=True)
    return diagnosis


def _local_answer(result: Any) -> Answer:
    evidence = getattr(result, "evidence", None)
    # tuple.__new__ skips the NamedTuple's Python-level constructor: read on every call.
    answer: Answer = _new_tuple(
        Answer,
        (
            getattr(result, "value", None),
            _finite(getattr(result, "confidence", None)),
            evidence if type(evidence) is dict or isinstance(evidence, Mapping) else _NO_EVIDENCE,
            None,
            None,
            None,
        ),
    )
    return answer


# --------------------------------------------------------------------------------- hosted


def _is_admitted(data: Mapping[str, Any]) -> bool:
    """QWED's own admission rule (`qwed_sdk.models.is_admitted`)."""
    models: Any = sys.modules.get("qwed_sdk.models")
    if models is None:
        # Only look-alike mappings get here before qwed_sdk is loaded (a result loads it).
        models = importlib.import_module("qwed_sdk.models")
    return models.is_admitted(dict(data)) is True


def _hosted_fields(result: Any) -> tuple[Mapping[str, Any], str | None, str | None, Any]:
    """(response data, status, admission, error) of a hosted result."""
    data = getattr(result, "result", None)
    data = data if isinstance(data, Mapping) else {}
    status = getattr(result, "status", None)
    admission = getattr(result, "admission", None)
    error = getattr(result, "error", None)
    return data, status if isinstance(status, str) else None, admission, error


def _hosted_final(data: Mapping[str, Any], rules: VerdictRules) -> bool:
    if rules.deterministic is not None:
        return rules.deterministic
    if rules.method is not None:
        return rules.method in _HOSTED_DETERMINISTIC
    return not any(key in data for key in _LLM_KEYS)


def _hosted_verdict(
    data: Mapping[str, Any],
    status: str | None,
    admission: Any,
    error: Any,
    is_verified: Any,
    rules: VerdictRules,
) -> Diagnosis:
    """The verdict of one hosted answer: its response data plus what the client read from it."""
    merged = {**data, "status": status, "admission": admission}
    if is_verified is True and _is_admitted(merged):
        return _VERIFIED
    text = scrub(str(error)) if error else None
    message = data.get("message") if "status" not in data else None
    lowered = f"{text or ''} {message or ''}".lower()
    if status == "UNVERIFIABLE" and any(marker in lowered for marker in _UNREACHABLE):
        # verify_code / verify_sql / verify_fact turn a dead or hanging server into a result.
        return Diagnosis(Outcome.TRANSIENT, text or "server unreachable")
    final = _hosted_final(data, rules)
    why = f"QWED {status or 'no status'}" + (f", admission {admission}" if admission else "")
    if is_verified is True:
        # The client said verified, QWED's rule did not admit it: the rule wins.
        return Diagnosis(Outcome.UNVERIFIABLE, f"{why}: not admitted", final=final)
    if text is not None:
        return Diagnosis(Outcome.UNVERIFIABLE, f"{why}: {text}", final=final)
    if status == "BLOCKED" and str(data.get("constraint_id", "")).endswith("execution_error"):
        return Diagnosis(Outcome.UNVERIFIABLE, f"{why}: the engine could not run", final=final)
    if status == "VERIFIED" and admission is None:
        # The engine agreed but QWED's rule admits only with is_valid or an ADMIT admission.
        return Diagnosis(Outcome.UNVERIFIABLE, f"{why}: not admitted", final=final)
    if status in ("VERIFIED", "BLOCKED", "UNVERIFIED", "REFUTED", "FAILED"):
        return Diagnosis(Outcome.REFUTED, why, final=final)
    if status == "UNVERIFIABLE":
        return Diagnosis(Outcome.UNVERIFIABLE, why, final=final)
    return Diagnosis(Outcome.UNVERIFIABLE, f"unknown QWED status {status!r}", final=True)


def _judge_hosted(result: Any, rules: VerdictRules, wire: WireFailure | None = None) -> Diagnosis:
    data, status, admission, error = _hosted_fields(result)
    return _hosted_verdict(
        data, status, admission, error, getattr(result, "is_verified", None), rules
    )


def _hosted_answer(result: Any) -> Answer:
    data, status, admission, _ = _hosted_fields(result)
    attestation = getattr(result, "attestation", None)
    return _response_answer(data, status, admission, attestation)


def _response_answer(
    data: Mapping[str, Any], status: str | None, admission: Any, attestation: Any
) -> Answer:
    value: Any = dict(data)
    for key in _ANSWER_KEYS:
        if key in data:
            value = data[key]
            break
    confidence = _finite(data.get("confidence"))
    evidence = {key: item for key, item in data.items() if key != "attestation"}
    return Answer(
        value,
        confidence,
        evidence,
        status,
        admission if isinstance(admission, str) else None,
        attestation if isinstance(attestation, str) and attestation else None,
    )


def _batch_items(result: Any) -> Sequence[Any]:
    items = getattr(result, "items", None)
    return items if isinstance(items, Sequence) and not isinstance(items, (str, bytes)) else ()


def _item_verdict(item: Any) -> Diagnosis:
    data = getattr(item, "result", None)
    data = data if isinstance(data, Mapping) else {}
    error = getattr(item, "error", None) or data.get("error")
    status = data.get("status")
    return _hosted_verdict(
        data,
        status if isinstance(status, str) else None,
        data.get("admission"),
        error,
        _is_admitted(data),
        _BATCH_RULES,
    )


def _judge_batch(result: Any, rules: VerdictRules, wire: WireFailure | None) -> Diagnosis:
    items = _batch_items(result)
    total = getattr(result, "total_items", None)
    if not items:
        return Diagnosis(Outcome.UNVERIFIABLE, "batch has no items", final=True)
    if isinstance(total, int) and total != len(items):
        return Diagnosis(
            Outcome.UNVERIFIABLE, f"batch returned {len(items)} of {total} items", final=True
        )
    failed: list[tuple[str, Diagnosis]] = []
    for index, item in enumerate(items):
        verdict = _item_verdict(item)
        if verdict.outcome is not Outcome.VERIFIED:
            failed.append((str(getattr(item, "id", "") or index), verdict))
    if not failed:
        return _VERIFIED
    outcomes = {verdict.outcome for _, verdict in failed}
    # The worst item decides: a transient one may heal, an engine that could not run is
    # unverifiable, else the batch was refused.
    for outcome in (Outcome.TRANSIENT, Outcome.UNVERIFIABLE, Outcome.REFUTED):
        if outcome in outcomes:
            break
    named = ", ".join(f"{name} ({why.error or why.outcome.value})" for name, why in failed)
    return Diagnosis(
        outcome,
        f"batch: {len(failed)} of {len(items)} items not admitted: {named}",
        final=outcome is not Outcome.TRANSIENT,
    )


def _batch_answer(result: Any) -> Answer:
    items = []
    values = []
    for item in _batch_items(result):
        data = getattr(item, "result", None)
        data = data if isinstance(data, Mapping) else {}
        answer = _response_answer(data, data.get("status"), data.get("admission"), None)
        values.append(answer.value)
        item_id = getattr(item, "id", None)
        items.append({"id": item_id, "status": answer.status, "admission": answer.admission})
    evidence = {"job_id": getattr(result, "job_id", None), "items": items}
    return Answer(values, None, evidence, getattr(result, "status", None))


def _judge_guarded(result: Any, rules: VerdictRules, wire: WireFailure | None) -> Diagnosis:
    """A guarded call's own result, returned by another guarded function."""
    if result.source == "verified" and result.verified is True:
        return _VERIFIED
    if result.source == "unchecked":
        return _UNCHECKED
    outcome = result.outcome
    if outcome in (Outcome.VERIFIED, Outcome.UNCHECKED):
        outcome = Outcome.UNVERIFIABLE  # a fallback is never verified, whatever it says
    return Diagnosis(outcome, result.reason or result.error, final=True)


def _guarded_answer(result: Any) -> Answer:
    return Answer(
        result.value,
        result.confidence,
        result.evidence,
        result.status,
        result.admission,
        result.attestation,
    )


_BY_NAME.update(
    {
        "qwed_guard.fallback.GuardedResult": _Entry(_judge_guarded, _guarded_answer),
        "qwed_sdk.qwed_local.VerificationResult": _Entry(_judge_local, _local_answer),
        "qwed_sdk.models.VerificationResult": _Entry(_judge_hosted, _hosted_answer),
        "qwed_sdk.models.BatchResult": _Entry(_judge_batch, _batch_answer),
    }
)


# -------------------------------------------------------------- look-alikes and plain values

_PLAIN_TYPES = (bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict)


def _judge_mapping(result: Mapping[str, Any], rules: VerdictRules) -> Diagnosis | None:
    if "verified" in result:
        verified = result["verified"]
        if verified is True:
            return _contradicted(result.get("admission")) or _VERIFIED
        if verified is not False:
            why = f"'verified' is {type(verified).__name__}, not a bool"
            return Diagnosis(Outcome.UNVERIFIABLE, why, final=True)
        error = result.get("error")
        if error:
            return error_text_diagnosis(str(error), None)
        return Diagnosis(Outcome.REFUTED, final=rules.deterministic is True)
    if "is_verified" in result or "admission" in result:
        status = result.get("status")
        return _hosted_verdict(
            result,
            status if isinstance(status, str) else None,
            result.get("admission"),
            result.get("error"),
            result.get("is_verified", _is_admitted(result)),
            rules,
        )
    return None


def _no_verdict(result: Any, rules: VerdictRules) -> Diagnosis:
    """A plain value (passed or failed by `rules.plain`), or a shape nobody taught."""
    if isinstance(result, (*_PLAIN_TYPES, Mapping)):
        if rules.plain == "pass":
            return _UNCHECKED
        return Diagnosis(
            Outcome.UNVERIFIABLE,
            f"a plain {type(result).__name__} carries no verdict (plain='fail')",
            final=True,
        )
    name = f"{type(result).__module__}.{type(result).__qualname__}"
    return Diagnosis(
        Outcome.UNVERIFIABLE,
        f"no verdict known for a {name} result: register one with "
        "qwed_guard.register_verdict or pass verdict=",
        final=True,
    )


def _judge_object(result: Any, rules: VerdictRules, wire: WireFailure | None) -> Diagnosis:
    """Objects nobody registered: look-alikes of QWED's results, then plain values."""
    if result is None:
        return Diagnosis(Outcome.UNVERIFIABLE, "the function returned None: no verdict")
    if result is False:
        return Diagnosis(Outcome.REFUTED, "the function returned False")
    if hasattr(result, "verified"):
        return _judge_local(result, rules, None)
    if hasattr(result, "is_verified"):
        return _judge_hosted(result, rules)
    return _no_verdict(result, rules)


def _judge_any_mapping(result: Any, rules: VerdictRules, wire: WireFailure | None) -> Diagnosis:
    """Mappings nobody registered: look-alikes of QWED's responses, then plain dicts."""
    return _judge_mapping(result, rules) or _no_verdict(result, rules)


def _object_answer(result: Any) -> Answer:
    if hasattr(result, "verified"):
        return _local_answer(result)
    if hasattr(result, "is_verified"):
        return _hosted_answer(result)
    return Answer(result)


def _mapping_answer(result: Any) -> Answer:
    if "verified" in result:
        evidence = result.get("evidence")
        return Answer(
            result.get("value"),
            _finite(result.get("confidence")),
            evidence if isinstance(evidence, Mapping) else _NO_EVIDENCE,
        )
    if "is_verified" in result or "admission" in result:
        status = result.get("status")
        inner = result.get("result")
        data = inner if isinstance(inner, Mapping) else result
        return _response_answer(
            data,
            status if isinstance(status, str) else None,
            result.get("admission"),
            result.get("attestation"),
        )
    return Answer(result)


_OBJECT_SHAPE = _Entry(_judge_object, _object_answer)
_MAPPING_SHAPE = _Entry(_judge_any_mapping, _mapping_answer)


def answer_of(result: Any) -> Answer:
    """The value, confidence and QWED fields a result carries, whatever its shape."""
    try:
        return _entry_for(result).answer(result)
    except Exception:  # a user's answer function failing must not lose the call
        return Answer(result)


# ---------------------------------------------------------------------------- user verdicts


def _callable_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _user_verdict(judge: Judge | Classifier, result: Any) -> Diagnosis:
    try:
        verdict = judge(result)
    except Exception as exc:
        why = f"verdict {_callable_name(judge)} raised {type(exc).__name__}: {exc}"
        return Diagnosis(Outcome.UNVERIFIABLE, scrub(why), final=True)
    if isinstance(verdict, Diagnosis):
        return verdict
    if isinstance(verdict, Outcome):
        if verdict is Outcome.VERIFIED:
            return _VERIFIED
        error = getattr(result, "error", None) if not isinstance(result, BaseException) else None
        if isinstance(result, BaseException):
            error = f"{type(result).__name__}: {result}"
        return Diagnosis(verdict, scrub(str(error)) if error else None)
    if verdict is True:
        return _VERIFIED
    if verdict is False:
        return Diagnosis(Outcome.REFUTED)
    why = (
        f"verdict {_callable_name(judge)} returned {type(verdict).__name__}; "
        "expected an Outcome, a Diagnosis or a bool"
    )
    return Diagnosis(Outcome.UNVERIFIABLE, why, final=True)


# ----------------------------------------------------------------------------- attestations

_NO_KEYS = "no keys to check it with: give jwks= (the server's URL) or use guard_client"
_JWKS_MAX_AGE = 300.0  # seconds, as QWED's server says in Cache-Control


def _claims_unverified(token: str) -> Mapping[str, Any]:
    """A JWT's payload, read without checking it: only for the audit trail's id field."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, Mapping) else {}


def attestation_summary(token: str | None, *, checked: bool) -> dict[str, Any] | None:
    """What the audit trail keeps of an attestation: its id, its digest, whether it was checked."""
    if not token:
        return None
    jti = _claims_unverified(token).get("jti")
    return {
        "id": jti if isinstance(jti, str) else None,
        "sha256": hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest(),
        "checked": checked,
    }


class _Keys:
    """The server's JWKS, fetched from a URL or a QWED client and kept for five minutes."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.jwks: Mapping[str, Any] | None = source if isinstance(source, Mapping) else None
        self.fetched = -math.inf

    def _url(self) -> str:
        url = str(self.source).rstrip("/")
        return url if url.endswith(".json") else url + "/.well-known/jwks.json"

    def _fresh(self) -> Mapping[str, Any] | None:
        if isinstance(self.source, Mapping):
            return self.source
        if self.jwks is not None and clock.monotonic() - self.fetched <= _JWKS_MAX_AGE:
            return self.jwks
        return None

    def _keep(self, jwks: Any) -> Mapping[str, Any]:
        if not isinstance(jwks, Mapping):
            raise ValueError(f"JWKS is a {type(jwks).__name__}, not an object")
        self.jwks, self.fetched = jwks, clock.monotonic()
        return jwks

    def get(self) -> Mapping[str, Any]:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        getter = getattr(self.source, "get_jwks", None)
        if getter is not None:
            return self._keep(getter())
        import httpx

        response = httpx.get(self._url(), timeout=10.0)
        response.raise_for_status()
        return self._keep(response.json())

    async def aget(self) -> Mapping[str, Any]:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        getter = getattr(self.source, "get_jwks", None)
        if getter is not None:
            jwks = getter()
            if isinstance(jwks, Awaitable):
                jwks = await jwks
            return self._keep(jwks)
        import httpx

        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(self._url())
        response.raise_for_status()
        return self._keep(response.json())


def _tokens_of(result: Any) -> list[tuple[str | None, str | None, str | None]]:
    """(token, proof_ref, admission) of every answer a result carries."""
    if type(result).__qualname__ == "BatchResult" or hasattr(result, "job_id"):
        found = []
        for item in _batch_items(result):
            data = getattr(item, "result", None)
            data = data if isinstance(data, Mapping) else {}
            found.append((data.get("attestation"), data.get("proof_ref"), data.get("admission")))
        return found
    if isinstance(result, Mapping):
        return [(result.get("attestation"), result.get("proof_ref"), result.get("admission"))]
    return [
        (
            getattr(result, "attestation", None),
            getattr(result, "proof_ref", None),
            getattr(result, "admission", None),
        )
    ]


def _check_attestations(result: Any, jwks: Mapping[str, Any]) -> Diagnosis | None:
    """None when every answer's attestation verifies and signs ADMIT; else why not."""
    from qwed_sdk.attestation import AttestationError, verify_attestation

    tokens = _tokens_of(result)
    if not tokens:
        return Diagnosis(Outcome.UNVERIFIABLE, "attestation required: the result carries none")
    for token, proof_ref, admission in tokens:
        if not isinstance(token, str) or not token:
            return Diagnosis(Outcome.UNVERIFIABLE, "attestation required: the answer has none")
        try:
            claims = verify_attestation(token, jwks, proof_ref=str(proof_ref or ""))
        except AttestationError as exc:
            return Diagnosis(Outcome.UNVERIFIABLE, f"attestation does not verify: {exc}")
        except Exception as exc:  # a malformed token must fail closed, whatever PyJWT raises
            why = f"attestation does not verify: {type(exc).__name__}: {exc}"
            return Diagnosis(Outcome.UNVERIFIABLE, scrub(why))
        qwed = claims.get("qwed")
        signed = qwed.get("admission") if isinstance(qwed, Mapping) else None
        if signed != admission or (admission is not None and admission != "ADMIT"):
            why = f"attestation signs admission {signed!r}, the answer says {admission!r}"
            return Diagnosis(Outcome.UNVERIFIABLE, why)
    return None


# ------------------------------------------------------------------------------- the rules


_JWKS = {"anyOf": [{"type": "string", "pattern": "^https?://"}, {"type": "object"}]}


def _is_flag_or_unset(value: Any) -> Why:
    return (
        None if isinstance(value, bool) else (f"must be true, false or unset, got {value!r}", False)
    )


def _is_jwks(value: Any) -> Why:
    usable = (
        isinstance(value, Mapping)
        or (isinstance(value, str) and value.startswith(("http://", "https://")))
        or callable(getattr(value, "get_jwks", None))
    )
    why = "must be the QWED server's URL, a JWKS URL, a JWKS object or a client"
    return None if usable else (why, False)


def _is_method(value: Any) -> Why:
    return None if isinstance(value, str) else ("must be a method name", True)


@dataclass(frozen=True, slots=True)
class VerdictRules:
    """How a stack judges results: `verdict=` on any decorator, or a policy's `verdict` table.

    - `judge`: a function of the result returning an Outcome, a Diagnosis or a bool, used
      instead of the table (`register_verdict` teaches the table a type instead).
    - `plain`: a plain value with no verdict (a number, text, `True`) passes through as the
      function's result with outcome `unchecked` and `verified=False` (`"pass"`), or counts
      as an unverifiable failure (`"fail"`). `None` and `False` always fail.
    - `deterministic`: the guarded call is a rule-based check (True) or asks an LLM (False):
      a deterministic refusal is final. Unset, the result's shape decides.
    - `require_attestation`: a verified answer must carry a QWED attestation that verifies
      against `jwks` (the server's base URL, a JWKS URL, or a JWKS object) and signs ADMIT.
    """

    judge: Judge | None = function(None, "Judges a result instead of the verdict table.")
    plain: PlainRule = choice("pass", ("pass", "fail"), "A plain value passes, or fails.")
    deterministic: bool | None = data(
        None,
        "The call is a rule-based check (true) or asks an LLM (false).",
        {"type": "boolean"},
        test=_is_flag_or_unset,
    )
    require_attestation: bool = flag(False, "A verified answer must carry a QWED attestation.")
    jwks: Any = data(
        None, "The attestation keys: the server's URL, a JWKS URL or object.", _JWKS, test=_is_jwks
    )
    method: str | None = data(None, "The QWED method the call runs.", STRING, test=_is_method)
    """The QWED method the call runs, when `guard_client` knows it."""
    _keys: _Keys | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check(VerdictRules, {name: getattr(self, name) for name in declared(VerdictRules)})
        jwks = self.jwks
        object.__setattr__(self, "_keys", _Keys(jwks) if jwks is not None else None)

    def describe(self) -> str:
        parts = [f"plain={self.plain}"]
        if self.judge is not None:
            parts.append(f"judge={_callable_name(self.judge)}")
        if self.deterministic is not None:
            parts.append(f"deterministic={self.deterministic}")
        if self.require_attestation:
            parts.append("require_attestation")
        return "verdict(" + "; ".join(parts) + ")"

    def with_client(self, method: str, client: Any) -> VerdictRules:
        """These rules for one method of a QWED client (its keys check attestations)."""
        jwks = self.jwks if self.jwks is not None else client
        if not callable(getattr(jwks, "get_jwks", None)) and self.jwks is None:
            jwks = None  # QWEDLocal has no keys: a required attestation then fails closed
        return dataclasses.replace(self, method=method, jwks=jwks)

    def keys(self) -> Mapping[str, Any]:
        if self._keys is None:
            raise LookupError(_NO_KEYS)
        return self._keys.get()

    async def akeys(self) -> Mapping[str, Any]:
        if self._keys is None:
            raise LookupError(_NO_KEYS)
        return await self._keys.aget()


DEFAULT_RULES = VerdictRules()
_BATCH_RULES = VerdictRules(method="verify_batch")


def as_rules(verdict: VerdictRules | Judge | None) -> VerdictRules | None:
    """A decorator's `verdict=` argument as rules (a bare function is the rules' `judge`)."""
    if verdict is None or isinstance(verdict, VerdictRules):
        return verdict
    if callable(verdict):
        return VerdictRules(judge=verdict)
    raise bad_parameter(
        "verdict", "must be a function of the result or VerdictRules(...)", wrong_type=True
    )


# --------------------------------------------------------------------------- the entry point


def judge_result(
    result: Any,
    rules: VerdictRules = DEFAULT_RULES,
    *,
    wire: WireFailure | None = None,
    jwks: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """The verdict on what a function returned (not an exception), under `rules`."""
    if rules.judge is not None:
        verdict = _user_verdict(rules.judge, result)
    else:
        try:
            verdict = _entry_for(result).judge(result, rules, wire)
        except Exception as exc:  # a shape that breaks its own reader fails closed
            why = f"cannot judge a {type(result).__name__} result: {type(exc).__name__}"
            verdict = Diagnosis(Outcome.UNVERIFIABLE, why, final=True)
    outcome = verdict.outcome
    if outcome is _OUTCOME_UNCHECKED and rules.plain == "fail":
        why = f"a {type(result).__name__} result carries no verdict (plain='fail')"
        return Diagnosis(Outcome.UNVERIFIABLE, why, final=True)
    if outcome is _OUTCOME_VERIFIED and rules.require_attestation:
        if jwks is None:
            try:
                jwks = rules.keys()
            except LookupError as exc:
                return Diagnosis(Outcome.UNVERIFIABLE, f"attestation required: {exc}", final=True)
            except Exception as exc:
                why = scrub(f"attestation keys unavailable: {type(exc).__name__}: {exc}")
                return Diagnosis(Outcome.TRANSIENT, why)
        refusal = _check_attestations(result, jwks)
        if refusal is not None:
            return refusal
    return verdict


async def prefetch_keys(rules: VerdictRules) -> Mapping[str, Any] | Diagnosis:
    """The JWKS for an async attempt, fetched without blocking the loop, or why not."""
    try:
        return await rules.akeys()
    except LookupError as exc:
        return Diagnosis(Outcome.UNVERIFIABLE, f"attestation required: {exc}", final=True)
    except Exception as exc:
        why = scrub(f"attestation keys unavailable: {type(exc).__name__}: {exc}")
        return Diagnosis(Outcome.TRANSIENT, why)


def diagnose(
    obj: Any,
    *,
    wire: WireFailure | None = None,
    classifier: Classifier | None = None,
    rules: VerdictRules = DEFAULT_RULES,
) -> Diagnosis:
    """Classify a result or an exception: the one verdict every layer reads.

    `wire` is the last failing HTTP response the guarded client recorded during the attempt;
    `classifier` (retry's) sees results and exceptions before the table does.
    """
    if classifier is not None:
        return _user_verdict(classifier, obj)
    if isinstance(obj, BaseException):
        return diagnose_exception(obj, wire)
    return judge_result(obj, rules, wire=wire)
