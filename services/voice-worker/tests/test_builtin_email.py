"""The confirmation email on a scheduler call: booked in the calendar, then emailed over SMTP with
STARTTLS (or implicit TLS) to a real local SMTP server (aiosmtpd) with a throwaway certificate,
only to an address the caller confirmed in the conversation."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import nats
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from livekit.agents import llm
from nats.aio.client import Client
from scripted_calls import ReleasingToolVault, ScriptedCall, open_call

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import ToolInvoked
from voiceagents.contracts.toolvault import RELEASE_SUBJECT, ToolCredentials
from voiceagents.devstack.servers import NatsServer, free_port
from voiceagents.worker.offline_model import OfflineScript, ScriptToolCall, ScriptTurn
from voiceagents.worker.standins.google_calendar import GoogleCalendarStandIn
from voiceagents.worker.tools.builtin.confirmation_email import (
    ConfirmationEmail,
    addresses_in,
    confirmed_in,
    spell,
)
from voiceagents.worker.tools.builtin.google_calendar import GoogleCalendar
from voiceagents.worker.tools.discovery import function_specs

pytestmark = pytest.mark.unit

NEW_YORK = ZoneInfo("America/New_York")
SMTP_USER = "desk@salon.test"
SMTP_PASSWORD = "smtp-" + uuid.uuid4().hex
LOOPBACK = ["127.0.0.1/32"]


# -- the address the caller confirmed ---------------------------------------------------------


def test_an_address_is_heard_written_or_spelled_out() -> None:
    assert "ana.lima@example.com" in addresses_in("So that's ana.lima@example.com, right?")
    assert "ana.lima@example.com" in addresses_in("a n a dot l-i-m-a at example dot com")
    # Whole words only: "joana" does not contain a confirmation of "ana".
    assert "ana@example.com" not in addresses_in("It's joana at example dot com.")


def test_the_spelled_back_address_reads_back_as_itself() -> None:
    address = "jo_bo-7+news@mail.example.co.uk"
    assert spell(address).startswith("j o underscore b o dash 7 plus n e w s at mail dot")
    assert address in addresses_in(f"Let me check: {spell(address)}. Is that right?")


def test_only_a_yes_right_after_the_read_back_confirms() -> None:
    read_back = ("assistant", "Shall I send it to a n a at example dot com?")
    assert confirmed_in([read_back, ("user", "Yes, that's right.")], "ana@example.com")
    assert not confirmed_in([read_back, ("user", "No, that's wrong.")], "ana@example.com")
    assert not confirmed_in([read_back, ("user", "Yes.")], "bo@example.com")
    # The caller saying the address is not a confirmation; nor is a yes to something else.
    assert not confirmed_in(
        [("user", "ana@example.com"), ("assistant", "Anything else?"), ("user", "Yes")],
        "ana@example.com",
    )
    assert not confirmed_in(
        [read_back, ("user", "Hmm, let me think."), ("user", "Yes")], "ana@example.com"
    )


# -- a real SMTP server with TLS --------------------------------------------------------------


@dataclass
class Inbox:
    """The local SMTP server's handler: keeps every accepted message and how it arrived."""

    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str], bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content))
            self.envelopes.append(
                (str(envelope.mail_from), list(envelope.rcpt_tos), session.ssl is not None)
            )
        return "250 Message accepted for delivery"


def login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == SMTP_USER.encode()
        and data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class Certificate:
    pem: str
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A throwaway self-signed certificate for 127.0.0.1, made for this test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp test")])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("smtp-cert")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(pem.decode(), directory / "cert.pem", directory / "key.pem")


@dataclass
class MailServer:
    inbox: Inbox
    port: int


def start_mail_server(
    certificate: Certificate, *, implicit_tls: bool
) -> tuple[Controller, MailServer]:
    inbox = Inbox()
    port = free_port()
    tls = certificate.server_context()
    options: dict[str, Any] = (
        # aiosmtpd does not count an implicit TLS connection as TLS for AUTH; it is one.
        {"ssl_context": tls, "auth_require_tls": False}
        if implicit_tls
        else {"tls_context": tls, "require_starttls": True}
    )
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=login,
        auth_required=True,
        **options,
    )
    controller.start()
    return controller, MailServer(inbox=inbox, port=port)


@pytest.fixture
def starttls_server(certificate: Certificate) -> Iterator[MailServer]:
    controller, server = start_mail_server(certificate, implicit_tls=False)
    yield server
    controller.stop()


@pytest.fixture
def tls_server(certificate: Certificate) -> Iterator[MailServer]:
    controller, server = start_mail_server(certificate, implicit_tls=True)
    yield server
    controller.stop()


def email_config(server: MailServer, certificate: Certificate, security: str) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "security": security,
        "sender": "desk@salon.test",
        "sender_name": "Acme Salon",
        "ca_certificate": certificate.pem,
        "network_allowlist": LOOPBACK,
    }


SMTP_CREDENTIALS = ToolCredentials(
    agent_tool_id="at-email",
    kind="api_key",
    secrets={"username": SMTP_USER, "password": SMTP_PASSWORD},
)


# -- a scheduler call -------------------------------------------------------------------------


@pytest.fixture
async def calendar() -> AsyncIterator[GoogleCalendarStandIn]:
    async with GoogleCalendarStandIn() as stand_in:
        yield stand_in


@pytest.fixture
async def vault(nats_server: NatsServer) -> AsyncIterator[ReleasingToolVault]:
    nc = await nats.connect(**nats_server.credentials("toolvault"))
    stand_in = ReleasingToolVault()
    subscription = await nc.subscribe(RELEASE_SUBJECT, cb=stand_in.handle)
    await nc.flush()  # subscribed on the server before any call asks
    yield stand_in
    await subscription.unsubscribe()
    await nc.close()


@pytest.fixture
async def calls() -> AsyncIterator[list[ScriptedCall]]:
    started: list[ScriptedCall] = []
    yield started
    for call in started:
        await call.session.aclose()


def scheduler(calendar_url: str, email: dict[str, Any]) -> AgentRuntimeConfig:
    return AgentRuntimeConfig(
        agent_id=f"agent-{uuid.uuid4().hex[:8]}",
        org_id="org-1",
        version=1,
        name="Sam",
        system_prompt="You book appointments for the salon.",
        tools=[
            ToolBinding(
                agent_tool_id="at-calendar",
                tool_name="google_calendar",
                auth_type="oauth2",
                config={
                    "calendar_id": "primary",
                    "timezone": "America/New_York",
                    "default_duration_minutes": 30,
                    "api_base_url": calendar_url,
                    "network_allowlist": LOOPBACK,
                },
                functions=function_specs(GoogleCalendar),
            ),
            ToolBinding(
                agent_tool_id="at-email",
                tool_name="email",
                auth_type="api_key",
                config=email,
                functions=function_specs(ConfirmationEmail),
            ),
        ],
    )


def tomorrow_at_2pm() -> dt.datetime:
    day = dt.datetime.now(NEW_YORK).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, 14, tzinfo=NEW_YORK)


def send(to: str, summary: str) -> ScriptToolCall:
    return ScriptToolCall(
        name="send_confirmation_email",
        arguments={"to": to, "subject": "Your haircut tomorrow at 2 pm", "summary": summary},
    )


async def test_a_booking_is_confirmed_by_email_to_the_address_the_caller_confirmed(
    calendar: GoogleCalendarStandIn,
    vault: ReleasingToolVault,
    worker_nats: Client,
    calls: list[ScriptedCall],
    starttls_server: MailServer,
    certificate: Certificate,
) -> None:
    token = f"ya29.{uuid.uuid4().hex}"
    calendar.grant(token)
    vault.credentials = {
        "at-calendar": ToolCredentials(
            agent_tool_id="at-calendar", kind="oauth2", access_token=token
        ),
        "at-email": SMTP_CREDENTIALS,
    }
    when = f"{tomorrow_at_2pm():%A %d %B} at 2 pm"
    details = f"Haircut for Ana Lima, {when}, 30 minutes, at Acme Salon, 12 Main Street."
    script = OfflineScript(
        turns=[
            ScriptTurn(
                when="book",
                tool_calls=[
                    ScriptToolCall(
                        name="create_event",
                        arguments={
                            "summary": "Haircut for Ana Lima",
                            "start_time": "tomorrow at 2pm",
                        },
                    )
                ],
            ),
            ScriptTurn(
                when="email",
                say="Sure. Shall I send it to a n a dot l i m a at example dot com?",
            ),
            ScriptTurn(when="yes", tool_calls=[send("ana.lima@example.com", details)]),
        ]
    )
    call = await open_call(
        scheduler(calendar.base_url, email_config(starttls_server, certificate, "starttls")),
        script,
        worker_nats,
    )
    calls.append(call)

    [booked] = await call.say("Please book me a haircut tomorrow at 2pm.")
    assert json.loads(booked)["booked"] is True
    await call.say("Can you email me the details?")
    [sent] = await call.say("Yes, that's right.")

    assert json.loads(sent) == {
        "sent": True,
        "answer": "I've sent the confirmation to a n a dot l i m a at example dot com.",
    }
    [mail] = starttls_server.inbox.messages
    assert mail["To"] == "ana.lima@example.com"
    assert mail["From"] == "Acme Salon <desk@salon.test>"
    assert mail["Subject"] == "Your haircut tomorrow at 2 pm"
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert details in body.decode()
    [(sender, recipients, over_tls)] = starttls_server.inbox.envelopes
    assert (sender, recipients, over_tls) == ("desk@salon.test", ["ana.lima@example.com"], True)
    [event] = [e for e in calendar.events() if e.summary == "Haircut for Ana Lima"]
    assert event.start == tomorrow_at_2pm().astimezone(dt.UTC)
    invoked = [e for e in call.events if isinstance(e, ToolInvoked)]
    assert [(e.function, e.outcome) for e in invoked] == [
        ("create_event", "ok"),
        ("send_confirmation_email", "ok"),
    ]
    # The address and the details never reach a call event.
    assert invoked[1].arguments["to"] == "[redacted]"
    assert invoked[1].arguments["summary"] == "[redacted]"


async def test_an_unconfirmed_address_is_refused_and_read_back_to_the_caller(
    vault: ReleasingToolVault,
    worker_nats: Client,
    calls: list[ScriptedCall],
    starttls_server: MailServer,
    certificate: Certificate,
) -> None:
    vault.credentials = {"at-email": SMTP_CREDENTIALS}
    config = scheduler("http://127.0.0.1:9", email_config(starttls_server, certificate, "starttls"))
    script = OfflineScript(
        turns=[
            ScriptTurn(when="send", tool_calls=[send("bo@example.com", "Your booking.")]),
            ScriptTurn(when="wrong", tool_calls=[send("bo@example.com", "Your booking.")]),
            ScriptTurn(when="yes", tool_calls=[send("bo@example.com", "Your booking.")]),
        ]
    )
    call = await open_call(config, script, worker_nats)
    calls.append(call)
    read_back = "Before I send it, let me check the address: b o at example dot com. Is that right?"

    assert await call.say("Send it to bo at example dot com please.") == [read_back]
    assert await call.say("No, that's wrong, it's different.") == [read_back]
    assert not starttls_server.inbox.messages

    [sent] = await call.say("Yes, that's it.")

    assert json.loads(sent)["sent"] is True
    assert [m["To"] for m in starttls_server.inbox.messages] == ["bo@example.com"]


def on_call(*turns: tuple[str, str]) -> Any:
    """What the tool sees of a call: the session's conversation so far."""
    history = llm.ChatContext()
    for role, text in turns:
        history.add_message(role=role, content=text)  # type: ignore[arg-type]
    return SimpleNamespace(session=SimpleNamespace(history=history))


CONFIRMED = on_call(("assistant", "Is it c y at example dot com?"), ("user", "Yes, exactly."))


# The server's implicit TLS connection is TLS; aiosmtpd just does not know it (see above).
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls_and_the_server_certificate_is_checked(
    tls_server: MailServer, certificate: Certificate
) -> None:
    tool = ConfirmationEmail(
        config=email_config(tls_server, certificate, "tls"), credentials=SMTP_CREDENTIALS
    )
    result = await tool.send_confirmation_email(CONFIRMED, "cy@example.com", "Hi", "Booked.")
    assert result["sent"] is True
    assert [m["To"] for m in tls_server.inbox.messages] == ["cy@example.com"]

    # Without the CA that signed the server's certificate, nothing is sent.
    untrusting = ConfirmationEmail(
        config={**email_config(tls_server, certificate, "tls"), "ca_certificate": ""},
        credentials=SMTP_CREDENTIALS,
    )
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusting.send_confirmation_email(CONFIRMED, "cy@example.com", "Hi", "Booked.")
    assert len(tls_server.inbox.messages) == 1


async def test_wrong_smtp_credentials_fail_and_an_internal_server_needs_the_allowlist(
    starttls_server: MailServer, certificate: Certificate
) -> None:
    config = email_config(starttls_server, certificate, "starttls")
    wrong = ToolCredentials(
        agent_tool_id="at-email", kind="api_key", secrets={"username": SMTP_USER, "password": "x"}
    )
    with pytest.raises(Exception, match="535"):
        await ConfirmationEmail(config=config, credentials=wrong).send_confirmation_email(
            CONFIRMED, "cy@example.com", "Hi", "Booked."
        )
    closed = {**config, "network_allowlist": []}
    with pytest.raises(Exception, match="not a public address"):
        await ConfirmationEmail(
            config=closed, credentials=SMTP_CREDENTIALS
        ).send_confirmation_email(CONFIRMED, "cy@example.com", "Hi", "Booked.")
    assert not starttls_server.inbox.messages


def test_the_function_schema_and_redaction() -> None:
    [spec] = function_specs(ConfirmationEmail)
    assert spec.name == "send_confirmation_email"
    assert spec.parameters["required"] == ["to", "subject", "summary"]
    assert spec.redact_arguments == ["to", "summary"]
    assert not spec.idempotent  # an email is never sent twice by a retry
