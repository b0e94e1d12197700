"""Email over SMTP: a plain-text message per alert, with a timeout, optional STARTTLS and login."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, Channel, DeliveryError, Options
from qwed_guard.alerts.record import Alert


class EmailChannel(Channel):
    def __init__(
        self,
        host: str,
        sender: str,
        to: Sequence[str],
        *,
        port: int | None = None,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port if port is not None else (587 if starttls else 25)
        self.sender = sender
        self.to = list(to)
        self.starttls = starttls
        self.username = username
        self.password = password
        self.cafile = cafile
        self.timeout = timeout
        self.name = f"email({host})"

    @classmethod
    def from_options(
        cls, where: str, data: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> EmailChannel:
        opts = Options(
            where,
            data,
            {
                "host",
                "port",
                "sender",
                "to",
                "starttls",
                "username",
                "username_env",
                "password",
                "password_env",
                "cafile",
                "timeout",
            },
        )
        host = opts.text("host")
        if host is None:
            opts.fail(f"{where}: host is required")
        sender = opts.text("sender")
        if sender is None or "@" not in sender:
            opts.fail(f"{where}: sender must be an email address")
        to = data.get("to")
        if isinstance(to, str):
            to = [to]
        if not to or not isinstance(to, Sequence):
            opts.fail(f"{where}: to must list at least one recipient")
        for address in to:
            if not isinstance(address, str) or "@" not in address:
                opts.fail(f"{where}: recipient {address!r} is not an email address")
        port = data.get("port")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            opts.fail(f"{where}: port must be an integer in 1-65535, got {port!r}")
        # A user name is not a secret, and scrubbing a common word everywhere would garble logs.
        username = opts.secret("username", required=False, register=False)
        password = opts.secret("password", required=False)
        if (username is None) != (password is None):
            opts.fail(f"{where}: give both username and password for login, or neither")
        return cls(
            host,
            sender,
            list(to),
            port=port,
            starttls=opts.flag("starttls", False),
            username=username,
            password=password,
            cafile=opts.text("cafile"),
            timeout=opts.number("timeout", timeout, positive=True),
        )

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"{alert.title}: {alert.message}"[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["X-QWED-Guard-Dedup-Key"] = alert.dedup_key
        msg.set_content(alert.text() + "\n")
        return msg

    def send(self, alert: Alert) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=self.cafile))
                if self.username is not None and self.password is not None:
                    smtp.login(self.username, self.password)
                smtp.send_message(self.message(alert))
        except smtplib.SMTPResponseException as exc:
            # SMTP's own rule: 4xx replies are temporary, 5xx are not (a bad login, a refused
            # recipient).
            raise DeliveryError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retryable=400 <= exc.smtp_code < 500
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"recipients refused: {exc.recipients}", retryable=False) from exc
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"TLS certificate rejected: {exc}", retryable=False) from exc
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
