"""E-mail over SMTP with the standard library, off the event loop.

:class:`SmtpMailer` sends a batch of deliveries in one SMTP session, in a worker
thread (``smtplib`` blocks): connect, ``EHLO``, ``STARTTLS`` when configured (the
server's certificate is verified), ``AUTH`` when a user is set, then one message
per delivery.  With ``implicit_tls`` (SMTPS, usually port 465) the connection is
TLS from its first byte instead, verified the same way.

What is tried again: a connection that fails or drops, a timeout, and a 4xx
answer (the server's "try later").  What is final: a 5xx answer, such as a
refused recipient or wrong credentials, and a server without STARTTLS when it
is required.  Neither the password nor the recipient's address is logged.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final

from pipeline.notify.channels import Delivery, Failure
from pipeline.notify.rules import EmailChannel

__all__ = ["SmtpMailer", "SmtpSettings", "compose_email"]

DEFAULT_SENDER: Final = "rastro@localhost"


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send e-mail.

    ``starttls`` upgrades the session to TLS before logging in (and refuses to go
    on without it).  ``implicit_tls`` speaks TLS from the start (SMTPS) and
    makes ``starttls`` moot.  ``user`` empty means no ``AUTH``.  ``tls`` is the TLS
    context; the default verifies the server against the system's trusted
    certificates.  ``timeout_s`` bounds each network step.
    """

    host: str
    port: int = 587
    starttls: bool = True
    implicit_tls: bool = False
    user: str = ""
    password: str = field(default="", repr=False)
    sender: str = DEFAULT_SENDER
    timeout_s: float = 30.0
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.host:
            message = "host must name the SMTP server, got ''"
            raise ValueError(message)
        if not 0 < self.port < 65536:
            message = f"port must be from 1 to 65535, got {self.port!r}"
            raise ValueError(message)
        if "@" not in self.sender:
            message = f"sender must be an e-mail address, got {self.sender!r}"
            raise ValueError(message)


def compose_email(delivery: Delivery, sender: str) -> EmailMessage:
    """The plain-text e-mail announcing ``delivery``'s event."""
    channel = delivery.channel
    if not isinstance(channel, EmailChannel):
        message = f"an e-mail needs an email channel, got {channel.kind!r}"
        raise ValueError(message)
    event = delivery.event
    device = _one_line(delivery.device_name or event["uniqueId"])

    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = channel.address
    mail["Subject"] = f"Rastro: {event['type']} - {device}"
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    mail["X-Rastro-Delivery"] = delivery.key
    mail.set_content(_text(delivery, device))
    return mail


def _text(delivery: Delivery, device: str) -> str:
    event = delivery.event
    lines = [f"{device} ({event['uniqueId']}): {event['type']} at {event['time']}"]
    if "latitude" in event:
        lines.append(f"Position: {event['latitude']:.6f}, {event['longitude']:.6f}")
    if event["attributes"]:
        lines.append("")
        lines.extend(
            f"{_one_line(name)}: {_one_line(str(value))}"
            for name, value in event["attributes"].items()
        )
    lines += ["", f'Sent by Rastro for your notification rule "{delivery.rule_name}".']
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    # Names come from users and devices: no line breaks in headers or lines.
    return " ".join(text.split())


class SmtpMailer:
    """Sends deliveries as e-mails through one SMTP server."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._tls = settings.tls or ssl.create_default_context()

    async def __call__(self, batch: Sequence[Delivery]) -> list[Failure | None]:
        """Send the batch in one session, in a thread; a failure or ``None`` each."""
        mails = [compose_email(delivery, self.settings.sender) for delivery in batch]
        return await asyncio.to_thread(self._send_all, mails)

    def _send_all(self, mails: list[EmailMessage]) -> list[Failure | None]:
        outcomes: list[Failure | None] = []
        try:
            with self._connect() as session:
                self._open(session)
                for mail in mails:
                    outcomes.append(self._send_one(session, mail))
        except (smtplib.SMTPException, OSError) as error:
            # The session failed: what was not sent yet shares its fate.
            failure = _failure(error)
            outcomes += [failure] * (len(mails) - len(outcomes))
        return outcomes

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        if settings.implicit_tls:
            return smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                timeout=settings.timeout_s,
                context=self._tls,
            )
        return smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)

    def _open(self, session: smtplib.SMTP) -> None:
        session.ehlo()
        if self.settings.starttls and not self.settings.implicit_tls:
            session.starttls(context=self._tls)
            session.ehlo()
        if self.settings.user:
            session.login(self.settings.user, self.settings.password)

    def _send_one(self, session: smtplib.SMTP, mail: EmailMessage) -> Failure | None:
        try:
            refused: dict[str, Any] = session.send_message(mail)
        except (
            smtplib.SMTPRecipientsRefused,
            smtplib.SMTPSenderRefused,
            smtplib.SMTPDataError,
        ) as error:
            return _failure(error)
        if refused:
            return Failure("recipient refused", retry=False)
        return None


def _failure(error: BaseException) -> Failure:
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return Failure(f"server does not support it: {error}", retry=False)
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        return Failure(f"recipient refused, SMTP {codes}", retry=min(codes) < 500)
    if isinstance(error, smtplib.SMTPResponseException):
        code = int(error.smtp_code)
        return Failure(f"SMTP {code} ({type(error).__name__})", retry=code < 500)
    if isinstance(error, ssl.SSLCertVerificationError):
        return Failure("server certificate not trusted", retry=False)
    return Failure(type(error).__name__, retry=True)
