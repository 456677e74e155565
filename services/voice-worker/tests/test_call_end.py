"""Who ended a call, why, and how it went, in every order the session's close and the room's end
can come."""

from __future__ import annotations

from livekit.agents.voice.events import CloseReason

from voiceagents.worker.call import how_it_ended


def test_the_agent_ending_the_call_wins_whatever_came_first() -> None:
    assert how_it_ended(None, False, "caller said goodbye") == (
        "agent",
        "caller said goodbye",
        "completed",
    )
    assert how_it_ended(CloseReason.PARTICIPANT_DISCONNECTED, True, "done") == (
        "agent",
        "done",
        "completed",
    )


def test_a_caller_hanging_up_is_the_caller_even_when_the_room_goes_first() -> None:
    # The gateway deletes the room once Twilio says the call completed; the session may still
    # be finishing a tool call then.
    hung_up = ("caller", "participant_disconnected", "completed")
    assert how_it_ended(CloseReason.PARTICIPANT_DISCONNECTED, True, None) == hung_up
    assert how_it_ended(None, True, None) == hung_up


def test_a_room_closed_under_the_caller_is_the_system() -> None:
    assert how_it_ended(None, False, None) == ("system", "room_closed", "completed")


def test_a_session_closed_on_an_error_failed() -> None:
    # livekit-agents closes the session with ERROR when the realtime model fails mid-call, and
    # the session ends without raising.
    assert how_it_ended(CloseReason.ERROR, False, None) == ("system", "error", "failed")
