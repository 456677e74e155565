"""TwiML the gateway answers with, built with twilio's `VoiceResponse`."""

from __future__ import annotations

from typing import Literal

from twilio.twiml.voice_response import VoiceResponse

RejectionReason = Literal["unknown_number", "inactive_agent", "at_capacity"]

# What the caller hears; polite, and never a detail an outsider should learn.
REJECTIONS: dict[RejectionReason, str] = {
    "unknown_number": "Sorry, this number is not in service. Goodbye.",
    "inactive_agent": "Sorry, this line is not taking calls at the moment. Please try again later.",
    "at_capacity": "Sorry, all our lines are busy right now. Please call again in a few minutes.",
}
APOLOGY = (
    "Sorry, we cannot take your call right now because of a technical problem. "
    "Please try again later."
)


def say_and_hang_up(sentence: str) -> str:
    response = VoiceResponse()
    response.say(sentence)
    response.hangup()
    return str(response)


def rejection(reason: RejectionReason) -> str:
    return say_and_hang_up(REJECTIONS[reason])


def apology() -> str:
    return say_and_hang_up(APOLOGY)


def hang_up() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def bridge(
    *,
    call_sid: str,
    sip_host: str,
    sip_username: str,
    sip_password: str,
    action_url: str,
    time_limit_seconds: int,
) -> str:
    """Bridge the caller into the call's LiveKit room over SIP. The SIP user part is the
    CallSid, from which LiveKit's callee dispatch rule names the room `call_<CallSid>`."""
    response = VoiceResponse()
    dial = response.dial(
        action=action_url, method="POST", answer_on_bridge=True, time_limit=time_limit_seconds
    )
    dial.sip(
        f"sip:{call_sid}@{sip_host};transport=tcp", username=sip_username, password=sip_password
    )
    return str(response)
