"""Building a QWEDLocal for guarded use.

QWEDLocal swallows every LLM exception into an error string that has lost the HTTP status
details (the error `code`, Retry-After). The client built here keeps them: its HTTP client's
response hook records each failing response into the current attempt, where the classifier
finds it. It also turns the SDK's own retries off (so `@retry` is the only loop: no 3 x 3
request amplification), sets a timeout, and disables QWED's on-disk result cache.
"""

from __future__ import annotations

import json
import os
from typing import Any

from qwed_guard.context import record_wire
from qwed_guard.outcomes import WireFailure, parse_retry_after

__all__ = ["guarded_client", "record_failing_response"]


def record_failing_response(response: Any) -> None:
    """httpx/httpx2 response hook: remember a failing response for the attempt's classifier."""
    status = int(response.status_code)
    if status < 400:
        return
    code: str | None = None
    message: str | None = None
    try:
        response.read()
        body = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            raw_code = error.get("code") or error.get("type")
            code = raw_code if isinstance(raw_code, str) else None
            raw_message = error.get("message")
            message = raw_message if isinstance(raw_message, str) else None
    record_wire(WireFailure(status, code, message, parse_retry_after(response.headers)))


def guarded_client(
    base_url: str | None = None,
    model: str = "gpt-4o-mini",
    *,
    api_key: str | None = None,
    api_key_env: str | None = None,
    provider: str | None = None,
    timeout: float = 30.0,
    cache: bool = False,
    **kwargs: Any,
) -> Any:
    """A `qwed_sdk.QWEDLocal` set up to be guarded: the way to build the client.

    - `max_retries=0`: `@retry` owns retries, so a 503 costs one request per attempt, not three;
    - `timeout` (seconds) bounds each HTTP request, so one attempt cannot hang;
    - an HTTP client whose response hook records status, error code and Retry-After of every
      failing response for the classifier;
    - `cache=False`: QWED's on-disk cache would otherwise answer repeated questions without
      asking the model, hiding failures.

    The key comes from `api_key`, or the environment variable named by `api_key_env`; it is
    never logged. Extra keyword arguments go to QWEDLocal (and from there to `openai.OpenAI`).
    """
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if api_key is None and api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {api_key_env} is not set")
    if base_url is None and provider is None:
        raise ValueError("give base_url (any OpenAI-compatible endpoint) or provider")
    try:
        import httpx2 as http
    except ImportError:  # older openai SDKs use httpx
        import httpx as http  # type: ignore[no-redef]
    from qwed_sdk import QWEDLocal  # imported here: it costs seconds

    http_client = http.Client(timeout=timeout, event_hooks={"response": [record_failing_response]})
    kwargs.setdefault("max_retries", 0)
    return QWEDLocal(
        provider=provider,
        api_key=api_key,
        base_url=base_url,
        model=model,
        cache=cache,
        timeout=timeout,
        http_client=http_client,
        **kwargs,
    )
