"""`guard_client`: one call that guards every `verify*` method of a QWED client.

QWED's LangChain, LlamaIndex and CrewAI classes keep a private client (`_client`) and turn every
error into a string, so decorating their methods guards nothing. Guard the client they hold:

    tool._client = guard_client(tool._client, Policy.preset("production", fallback_value=None))

Each method is wrapped once, on first use, with the policy's stack and verdict rules that know
the method (a refusal by `verify_code`/`verify_sql`/... is final) and, for the hosted clients,
ask the client for the server's keys when the policy requires attestations.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qwed_guard.errors import bad_parameter
from qwed_guard.verdicts import DEFAULT_RULES, VerdictRules

__all__ = ["GuardedClient", "guard_client"]


class GuardedClient:
    """A QWED client whose `verify*` methods run under a policy; everything else passes through."""

    __slots__ = ("__weakref__", "_client", "_guarded", "_lock", "_policy", "_rules")

    def __init__(self, client: Any, policy: Any, rules: VerdictRules) -> None:
        self._client = client
        self._policy = policy
        self._rules = rules
        self._guarded: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    @property
    def wrapped_client(self) -> Any:
        """The client underneath."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not (name.startswith("verify") and callable(attribute)):
            return attribute
        guarded = self._guarded.get(name)
        if guarded is None:
            with self._lock:
                guarded = self._guarded.get(name)
                if guarded is None:
                    rules = self._rules.with_client(name, self._client)
                    guarded = self._policy.wrap_with(attribute, rules)
                    self._guarded[name] = guarded
        return guarded

    # Hosted clients are context managers; the proxy is one too, for the same client.
    def __enter__(self) -> GuardedClient:
        self._client.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._client.__exit__(*exc)

    async def __aenter__(self) -> GuardedClient:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> Any:
        return await self._client.__aexit__(*exc)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._client)) | {"wrapped_client"})

    def __repr__(self) -> str:
        return f"<GuardedClient of {type(self._client).__name__}>"


def guard_client(client: Any, policy: Any) -> GuardedClient:
    """Guard every `verify*` method of `client` (QWEDLocal, QWEDClient or QWEDAsyncClient).

    `policy` is a `Policy`, its data (a mapping) or a policy file's path. Sync methods stay
    sync and async ones async; each method gets its own breaker and alert state.
    """
    from qwed_guard.policy import Policy

    if client is None or isinstance(client, GuardedClient):
        what = "already guarded" if client is not None else "None"
        raise bad_parameter("client", f"must be a QWED client, got {what}")
    if isinstance(policy, (str, Path)):
        policy = Policy.from_file(policy)
    elif isinstance(policy, Mapping):
        policy = Policy.from_dict(policy)
    elif not isinstance(policy, Policy):
        raise bad_parameter(
            "policy", f"must be a Policy, its data or a file, got {type(policy).__name__}"
        )
    if not any(name.startswith("verify") for name in dir(client)):
        raise bad_parameter("client", f"a {type(client).__name__} has no verify* methods")
    return GuardedClient(client, policy, policy.verdict or DEFAULT_RULES)
