"""qwed_guard: retry, fallback, alerts and an audit trail around QWED verifications.

from qwed_guard import fallback, guarded_client, retry

client = guarded_client(base_url="http://127.0.0.1:8000/v1", model="qwed-sim")

@fallback(value=100.0)
@retry(max_tries=3)
def interest(query: str):
    return client.verify_math(query)
"""

from qwed_guard._version import __version__
from qwed_guard.alerts import Alert, alert_on_failures
from qwed_guard.audit import audited
from qwed_guard.breaker import BreakerState, CircuitOpen, circuit_breaker
from qwed_guard.budget import retry_budget
from qwed_guard.bulkhead import ConcurrencyLimited, concurrency_limit
from qwed_guard.client import guarded_client
from qwed_guard.context import Attempt, audit_context
from qwed_guard.errors import (
    AuditError,
    FallbackError,
    PolicyError,
    QwedGuardError,
    VerificationFailed,
)
from qwed_guard.fallback import Failure, GuardedResult, fallback
from qwed_guard.hooks import add_hook, remove_hook
from qwed_guard.layer import CallOutcome, classify, observed
from qwed_guard.outcomes import Diagnosis, Outcome
from qwed_guard.policy import Policy
from qwed_guard.proxy import guard_client
from qwed_guard.retry import retry
from qwed_guard.timeout import AttemptTimeout, attempt_timeout
from qwed_guard.verdicts import VerdictRules, diagnose, register_verdict

__all__ = [
    "Alert",
    "Attempt",
    "AttemptTimeout",
    "AuditError",
    "BreakerState",
    "CallOutcome",
    "CircuitOpen",
    "ConcurrencyLimited",
    "Diagnosis",
    "Failure",
    "FallbackError",
    "GuardedResult",
    "Outcome",
    "Policy",
    "PolicyError",
    "QwedGuardError",
    "VerdictRules",
    "VerificationFailed",
    "__version__",
    "add_hook",
    "alert_on_failures",
    "attempt_timeout",
    "audit_context",
    "audited",
    "circuit_breaker",
    "classify",
    "concurrency_limit",
    "diagnose",
    "fallback",
    "guard_client",
    "guarded_client",
    "observed",
    "register_verdict",
    "remove_hook",
    "retry",
    "retry_budget",
]
