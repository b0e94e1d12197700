"""What every channel shares: the interface, delivery errors, settings read from plain data."""

from __future__ import annotations

import abc
import math
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from qwed_guard.alerts.record import Alert
from qwed_guard.errors import bad_parameter
from qwed_guard.outcomes import parse_retry_after, register_secret, scrub
from qwed_guard.redact import register_url

if TYPE_CHECKING:
    import httpx

__all__ = ["Channel", "DeliveryError", "HttpChannel", "Options"]

DEFAULT_TIMEOUT = 10.0


class DeliveryError(Exception):
    """A channel could not deliver an alert; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(scrub(message))
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(abc.ABC):
    """Somewhere alerts go. `send` runs on the channel's own delivery thread, never the caller's."""

    name: str = "channel"
    """How logs name the channel: never a URL, key or address."""
    timeout: float = DEFAULT_TIMEOUT
    min_interval: float = 0.0
    """Least seconds between two sends (a rate limit the endpoint imposes)."""

    @classmethod
    def from_options(
        cls, where: str, data: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> Channel:
        """The channel a `{name: data}` item of `notify` describes (`where` says where it is,
        for errors; `timeout` is the layer's `channel_timeout`). By default `cls(**data)`."""
        try:
            return cls(**data)
        except TypeError as exc:
            raise bad_parameter("notify", f"{where}: {exc}") from None

    @abc.abstractmethod
    def send(self, alert: Alert) -> None:
        """Deliver one alert; raise `DeliveryError` (or a network error) when it fails."""

    def close(self) -> None:  # noqa: B027 - most channels hold nothing to release
        """Release connections; the channel may be used again afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Options:
    """One channel's settings as given in `notify`, with errors that name where they are."""

    def __init__(self, where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
        if not isinstance(data, Mapping):
            self.fail(f"{where}: settings must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise bad_parameter(
                "notify", f"{where}: unknown setting(s) {unknown}; allowed: {sorted(allowed)}"
            )
        self.where = where
        self.data = data

    @staticmethod
    def fail(problem: str) -> NoReturn:
        raise bad_parameter("notify", problem)

    def secret(self, name: str, *, required: bool = True, register: bool = True) -> str | None:
        """A value given directly (`name`) or by environment variable (`name_env`); registered
        (unless `register=False`) so it is scrubbed wherever it might appear."""
        value = self.data.get(name)
        env = self.data.get(f"{name}_env")
        if value is not None and env is not None:
            self.fail(f"{self.where}: give {name} or {name}_env, not both")
        if env is not None:
            if not isinstance(env, str) or not env:
                self.fail(f"{self.where}: {name}_env must name an environment variable")
            value = os.environ.get(env)
            if not value:
                self.fail(f"{self.where}: environment variable {env} is not set")
        if value is None:
            if required:
                self.fail(f"{self.where}: {name} (or {name}_env) is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{self.where}: {name} must be a non-empty string")
        if register:
            register_secret(value)
        return str(value)

    def url(self, name: str, *, default: str | None = None) -> str:
        """A secret http(s) URL; malformed ones are refused without echoing them."""
        value = self.secret(name, required=default is None) or default
        assert value is not None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
            self.fail(
                f"{self.where}: {name} must be an http:// or https:// URL with a host "
                f"(got {scheme}, value withheld)"
            )
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.data.get(name, default)
        if value is not None and (not isinstance(value, str) or not value):
            self.fail(f"{self.where}: {name} must be a non-empty string")
        return value

    def number(
        self, name: str, default: float, *, positive: bool = False, maximum: float = 3600.0
    ) -> float:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"{self.where}: {name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            self.fail(f"{self.where}: {name} must be {'> 0' if positive else '>= 0'}, got {value}")
        if value > maximum:
            self.fail(f"{self.where}: {name} must be at most {maximum:g}, got {value:g}")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            self.fail(f"{self.where}: {name} must be true or false, got {value!r}")
        return bool(value)


class HttpChannel(Channel):
    """A channel that POSTs JSON with httpx; one client per channel, opened on first use.

    `timeout` bounds the whole delivery, not each read: a receiver that drips its reply a
    byte at a time is cut off when the time is up (a timer closes the connection).
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: httpx.Client | None = None
        # The URL, and the path tokens a receiver may echo without the rest of it.
        register_url(url)

    def post(self, payload: Any, headers: Mapping[str, str] | None = None) -> int:
        """POST `payload`; a 2xx returns its status, anything else raises a classified
        `DeliveryError`."""
        import httpx  # imported here: it costs ~0.1 s and only delivery needs it

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
        client = self._client
        expired = threading.Event()

        def cut_off() -> None:
            expired.set()
            client.close()  # unblocks a read in progress on the delivery thread

        timer = threading.Timer(self.timeout, cut_off)
        timer.daemon = True
        timer.start()
        cut = False
        try:
            with client.stream("POST", self.url, json=payload, headers=headers) as response:
                status = response.status_code
                body = bytearray()
                for chunk in response.iter_bytes():
                    if len(body) < 1024:
                        body += chunk
                    if expired.is_set():
                        cut = True
                        break
        except (httpx.TransportError, httpx.StreamError, RuntimeError) as exc:
            if expired.is_set():
                self._client = None
                raise DeliveryError(
                    f"timed out: the delivery took longer than {self.timeout:g} s",
                    retryable=True,
                ) from None
            if not isinstance(exc, httpx.TransportError):
                raise
            # Connection refused, timeouts, resets: the endpoint may come back.
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        finally:
            timer.cancel()
        if expired.is_set():
            self._client = None  # closed by the timer (maybe just after the reply was whole)
        if cut:
            raise DeliveryError(
                f"timed out: the delivery took longer than {self.timeout:g} s", retryable=True
            )
        if 200 <= status < 300:
            return status
        retryable = status in (408, 429) or status >= 500
        retry_after = parse_retry_after(response.headers) if retryable else None
        text = body.decode("utf-8", "replace")[:200].strip()
        raise DeliveryError(
            f"HTTP {status}" + (f": {text}" if text else ""),
            retryable=retryable,
            retry_after=retry_after,
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
