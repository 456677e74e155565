"""Confirmation email: sends the caller a short written summary (a booking, a callback) by SMTP.

Config: the mail server (`host`, `port`, `security`: `starttls` on 587 or implicit `tls` on 465
— never plain text), the `sender` address and name, and optionally a `ca_certificate` (PEM) for
a relay with a private CA. Credentials: tool-vault secrets `username` and `password` (none: the
relay accepts the worker without login). The server's address passes the same SSRF guard as the
HTTP tools (`network_allowlist` opens it for an internal relay) and the connection goes to the
address that was checked, while TLS verifies the host name.

An address heard on the phone is easily wrong, and a mail to the wrong person leaks the
caller's details. So the email is only sent to an address the caller confirmed *in this call's
transcript*: an agent turn spelled it back (written or spelled out: "a n a at example dot
com") and the caller's next turn agreed ("yes", "that's right") without a "no" or "wrong".
Otherwise the function sends nothing and answers with a sentence that spells the address back
and asks — when the caller then says yes, the next attempt goes through. The model cannot
shortcut this: the caller's turns are the speech recognizer's transcript, not model output.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any

import aiosmtplib
import httpx
from livekit.agents import RunContext

from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function
from voiceagents.worker.tools.ssrf import (
    ALLOWLIST_CONFIG_KEY,
    Allowlist,
    IPAddress,
    SystemResolver,
    check_destination,
)

# One call cannot turn the agent into a mail cannon.
MAX_EMAILS_PER_CALL = 3
SMTP_TIMEOUT_SECONDS = 10.0
# Longest stretch of spoken tokens that can make up one address ("j o h n dot s m i t h ...").
MAX_ADDRESS_TOKENS = 60

ADDRESS = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}$")
SPOKEN_SYMBOLS = {
    "at": "@",
    "dot": ".",
    "period": ".",
    "point": ".",
    "underscore": "_",
    "dash": "-",
    "hyphen": "-",
    "minus": "-",
    "plus": "+",
}
SYMBOLS_SPOKEN = {".": "dot", "_": "underscore", "-": "dash", "+": "plus"}
AGREES = {"yes", "yeah", "yep", "yup", "correct", "right", "exactly", "sure", "ok", "okay"}
DISAGREES = {"no", "nope", "not", "wrong", "incorrect", "nah", "wait"}

NOT_AN_ADDRESS = "That doesn't sound like a complete email address. Could you spell it for me?"
TOO_MANY = "I've already sent the emails I can send on this call."
REFUSED_BY_SERVER = "The mail server wouldn't accept that address. Could you spell it again?"


def _tokens(text: str) -> list[str]:
    """Words of a transcript line, with spoken symbols as symbols and "a-n-a" as "ana"."""
    tokens: list[str] = []
    for raw in re.findall(r"[\w.@+'-]+", text.lower()):
        token = raw.strip(".'-")
        token = SPOKEN_SYMBOLS.get(token, token)
        if re.fullmatch(r"(?:[a-z0-9]-)+[a-z0-9]", token):
            token = token.replace("-", "")
        if token:
            tokens.append(token)
    return tokens


def addresses_in(text: str) -> set[str]:
    """Every reading of an address in a line, written or spelled out: each run of whole words
    that joins into an address ("joana at x dot com" never yields "ana@x.com")."""
    tokens = _tokens(text)
    found: set[str] = set()
    for start in range(len(tokens)):
        joined = ""
        for token in tokens[start : start + MAX_ADDRESS_TOKENS]:
            joined += token
            if "@" in joined and ADDRESS.match(joined):
                found.add(joined)
    return found


def agrees(text: str) -> bool:
    words = set(_tokens(text.replace("'", " ")))
    return bool(words & AGREES) and not words & DISAGREES


def confirmed_in(turns: Iterable[tuple[str, str]], address: str) -> bool:
    """Whether an agent turn spelled `address` back and the caller's next turn agreed.
    `turns` are (role, text) in order, role "assistant" or "user"."""
    spelled_back = False
    for role, text in turns:
        if role == "assistant":
            spelled_back = spelled_back or address in addresses_in(text)
        elif spelled_back:
            if agrees(text):
                return True
            spelled_back = False
    return False


def spell(address: str) -> str:
    """The address as the agent reads it back: the name letter by letter, the domain in words."""
    local, _, domain = address.partition("@")
    letters = " ".join(SYMBOLS_SPOKEN.get(c, c) for c in local)
    return f"{letters} at {domain.replace('.', ' dot ')}"


def _call_turns(context: RunContext[Any]) -> list[tuple[str, str]]:
    return [
        (item.role, item.text_content or "")
        for item in context.session.history.items
        if item.type == "message" and item.role in ("assistant", "user")
    ]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ConfirmationEmail(BaseTool):
    metadata = ToolMetadata(
        name="email",
        description="Sends the caller a confirmation email, to an address they confirmed.",
        config_schema={
            "type": "object",
            "properties": {
                "host": {"type": "string", "description": "SMTP server, e.g. smtp.example.com"},
                "port": {"type": "integer", "default": 587, "minimum": 1, "maximum": 65535},
                "security": {
                    "type": "string",
                    "enum": ["starttls", "tls"],
                    "default": "starttls",
                    "description": "starttls (usually port 587) or implicit tls (port 465).",
                },
                "sender": {"type": "string", "description": "From address, e.g. desk@acme.com"},
                "sender_name": {"type": "string", "description": "From name, e.g. Acme Salon"},
                "ca_certificate": {
                    "type": "string",
                    "description": "PEM certificate of a private CA the server's certificate "
                    "is signed by; leave empty for public servers.",
                },
                ALLOWLIST_CONFIG_KEY: {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Internal hosts or networks the tool may connect to.",
                    "default": [],
                },
            },
            "required": ["host", "sender"],
            "additionalProperties": False,
        },
        auth_type="api_key",
        timeout_seconds=SMTP_TIMEOUT_SECONDS + 5,
    )

    def __init__(
        self, *, config: Mapping[str, Any], credentials: ToolCredentials | None = None
    ) -> None:
        super().__init__(config=config, credentials=credentials)
        self.sent = 0  # emails sent on this call

    @tool_function(redact_arguments=["to", "summary"])
    async def send_confirmation_email(
        self, context: RunContext[Any], to: str, subject: str, summary: str
    ) -> dict[str, Any]:
        """Email the caller a written confirmation. Only after you have spelled the address back
        to the caller and they said it is right.

        Args:
            to: The email address exactly as you spelled it back, e.g. "ana@example.com".
            subject: A short subject, e.g. "Your haircut on Friday at 2 pm".
            summary: The details to confirm: what, when, where, and anything agreed.
        """
        address = to.strip().lower()
        if not ADDRESS.match(address):
            return {"sent": False, "say_to_caller": NOT_AN_ADDRESS}
        if not confirmed_in(_call_turns(context), address):
            return {
                "sent": False,
                "confirmed_by_caller": False,
                "say_to_caller": f"Before I send it, let me check the address: {spell(address)}. "
                "Is that right?",
            }
        if self.sent >= MAX_EMAILS_PER_CALL:
            return {"sent": False, "say_to_caller": TOO_MANY}
        message = self._message(address, _one_line(subject), summary)
        try:
            await self._send(message)
        except aiosmtplib.SMTPRecipientsRefused:
            return {"sent": False, "say_to_caller": REFUSED_BY_SERVER}
        self.sent += 1
        return {"sent": True, "answer": f"I've sent the confirmation to {spell(address)}."}

    def _message(self, to: str, subject: str, summary: str) -> EmailMessage:
        sender = str(self.config.get("sender", ""))
        message = EmailMessage()
        message["From"] = formataddr((str(self.config.get("sender_name", "")), sender))
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
        message.set_content(summary.strip() + "\n")
        return message

    async def _send(self, message: EmailMessage) -> None:
        host = str(self.config.get("host", ""))
        port = int(self.config.get("port", 587))
        implicit_tls = self.config.get("security", "starttls") == "tls"
        address = await check_destination(
            # The guard judges where a connection may go by URL; the scheme only names a port.
            httpx.URL(scheme="https", host=host, port=port),
            Allowlist.from_config(self.config),
            SystemResolver(),
        )
        secrets = self.credentials.secrets if self.credentials else {}
        # The connection's transport owns the socket from here and closes it, also when the
        # TLS handshake or the login fails (closing it here too would free its file descriptor
        # while the event loop still watches it).
        await aiosmtplib.send(
            message,
            hostname=host,  # the TLS server name: the certificate must match it
            sock=await _connect(address, port),
            use_tls=implicit_tls,
            start_tls=not implicit_tls,  # required: refuses a server without STARTTLS
            tls_context=self._tls_context(),
            username=secrets.get("username") or None,
            password=secrets.get("password") or None,
            timeout=SMTP_TIMEOUT_SECONDS,
        )

    def _tls_context(self) -> ssl.SSLContext:
        ca = str(self.config.get("ca_certificate") or "")
        return ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()


async def _connect(address: IPAddress, port: int) -> socket.socket:
    """A TCP connection to the address the SSRF guard checked (no second DNS answer)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(SMTP_TIMEOUT_SECONDS):
            await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except BaseException:
        sock.close()
        raise
    return sock
