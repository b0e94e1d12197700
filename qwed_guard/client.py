"""Building a QWEDLocal for guarded use.

QWEDLocal swallows every LLM exception into an error string that has lost the HTTP status
details (the error `code`, Retry-After). The client built here keeps them: its HTTP client's
response hook records each failing response into the current attempt, where the classifier
finds it. It also turns the SDK's own retries off (so `@retry` is the only loop: no 3 x 3
request amplification), sets a timeout, and disables QWED's on-disk result cache.

One `verify_math` asks the model twice (the answer, then a SymPy expression). When the second
request fails, `@retry` runs the whole method again; the client's transport then answers the
first request with the reply it already got, instead of asking (and paying) for it again, as
long as every attempt since that reply failed transiently. After a wrong or unverifiable
answer nothing is reused: the next attempt asks the model afresh.
"""

from __future__ import annotations

import json
import os
from typing import Any

from qwed_guard.context import CallContext, current, record_wire
from qwed_guard.outcomes import Outcome, WireFailure, parse_retry_after
from qwed_guard.replies import CallReplies

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


# Headers that describe the bytes on the wire, not the (already decoded) content kept here.
_WIRE_HEADERS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


def _still_valid(ctx: CallContext, got_in: int) -> bool:
    """A reply from attempt `got_in` stands while every attempt since ended transient."""
    return all(a.outcome is Outcome.TRANSIENT for a in ctx.attempts if a.number >= got_in)


def _is_json_object(content: bytes) -> bool:
    try:
        return isinstance(json.loads(content), dict)
    except ValueError:
        return False


def _reusing_transport(http: Any, inner: Any) -> Any:
    """`inner` (an httpx/httpx2 transport), answering a retried call's repeated requests from
    the replies its earlier attempts got (see the module docstring)."""

    class ReusingTransport(http.BaseTransport):  # type: ignore[misc]
        def handle_request(self, request: Any) -> Any:
            ctx = current()
            if ctx is None or not ctx.in_user_code:  # not inside a guarded call's attempt
                return inner.handle_request(request)
            replies = ctx.replies
            if replies is None:
                replies = ctx.replies = CallReplies()
            key = b"%s %s\n%s" % (
                request.method.encode(),
                str(request.url).encode(),
                request.read(),
            )
            attempt = ctx.attempt
            kept = replies.kept.get(key)
            if kept is not None and kept[0] < attempt and _still_valid(ctx, kept[0]):
                replies.reused[attempt] = replies.reused.get(attempt, 0) + 1
                _, status, headers, content = kept
                return http.Response(status, headers=headers, content=content, request=request)
            response = inner.handle_request(request)
            content_type = response.headers.get("content-type", "")
            if response.status_code == 200 and content_type.startswith("application/json"):
                response.read()
                if _is_json_object(response.content):  # a malformed body is never replayed
                    headers = [
                        (k, v) for k, v in response.headers.raw if k.lower() not in _WIRE_HEADERS
                    ]
                    replies.kept[key] = (attempt, 200, headers, response.content)
            return response

        def close(self) -> None:
            inner.close()

    return ReusingTransport()


def guarded_client(
    base_url: str | None = None,
    model: str = "gpt-4o-mini",
    *,
    api_key: str | None = None,
    api_key_env: str | None = None,
    provider: str | None = None,
    timeout: float = 30.0,
    cache: bool = False,
    reuse_replies: bool = True,
    **kwargs: Any,
) -> Any:
    """A `qwed_sdk.QWEDLocal` set up to be guarded: the way to build the client.

    - `max_retries=0`: `@retry` owns retries, so a 503 costs one request per attempt, not three;
    - `timeout` (seconds) bounds each HTTP request, so one attempt cannot hang;
    - an HTTP client whose response hook records status, error code and Retry-After of every
      failing response for the classifier;
    - `cache=False`: QWED's on-disk cache would otherwise answer repeated questions without
      asking the model, hiding failures;
    - `reuse_replies=True`: when `@retry` runs `verify_math` again after a transient failure
      of its second request, the first one is answered with the reply already received (one
      request, not two; the attempt's audit record counts it in `reused`). Never after a wrong
      or unverifiable answer.

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

    transport = _reusing_transport(http, http.HTTPTransport()) if reuse_replies else None
    http_client = http.Client(
        timeout=timeout, transport=transport, event_hooks={"response": [record_failing_response]}
    )
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
