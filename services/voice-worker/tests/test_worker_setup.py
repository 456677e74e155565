"""Worker set-up a deployment notices: settings that name what is wrong, the production model
built exactly from the agent's config (no network), and admission by exact count."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from voiceagents.worker.admission import Admission
from voiceagents.worker.call import instructions_for
from voiceagents.worker.gemini import gemini_realtime_model
from voiceagents.worker.metrics import exposition
from voiceagents.worker.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_settings_name_the_variable_that_is_wrong() -> None:
    with pytest.raises(SettingsError, match="VA_WORKER_MAX_CALLS"):
        Settings.from_env({"VA_WORKER_MAX_CALLS": "many", "VA_WORKER_DEV_MODE": "true"})
    with pytest.raises(SettingsError, match="VA_NATS_WORKER_PASSWORD is a placeholder"):
        Settings.from_env({"LIVEKIT_API_SECRET": "s" * 32, "GOOGLE_API_KEY": "g" * 32})
    with pytest.raises(SettingsError, match="GOOGLE_API_KEY is a placeholder"):
        Settings.from_env({"VA_NATS_WORKER_PASSWORD": "p" * 24, "LIVEKIT_API_SECRET": "s" * 32})


def test_settings_come_from_the_shared_variables_too() -> None:
    settings = Settings.from_env(
        {
            "VA_NATS_URL": "nats://nats:4222",
            "VA_NATS_WORKER_PASSWORD": "p" * 24,
            "LIVEKIT_URL": "ws://livekit:7880",
            "LIVEKIT_API_KEY": "key",
            "LIVEKIT_API_SECRET": "s" * 32,
            "VA_WORKER_MODEL": "offline",
            "VA_WORKER_MAX_CALLS": "8",
        }
    )
    assert (settings.nats_url, settings.livekit_url, settings.max_calls) == (
        "nats://nats:4222",
        "ws://livekit:7880",
        8,
    )


def test_the_gemini_model_is_built_from_the_agents_config_without_connecting(
    make_config: Any,
) -> None:
    config = make_config(voice="Kore", model="gemini-2.5-flash-native-audio-preview-12-2025")
    call_context = _call(config)
    instructions = instructions_for(config, call_context, datetime(2026, 11, 24, tzinfo=UTC))

    model = gemini_realtime_model(config, instructions, api_key="test-key-not-used")

    assert model.model == "gemini-2.5-flash-native-audio-preview-12-2025"
    assert model._opts.voice == "Kore"
    assert model._opts.instructions == instructions
    assert instructions.startswith("You are Ada, the shop's phone assistant.")
    assert "Today is Tuesday, 24 November 2026 (UTC)." in instructions
    assert "The caller's phone number is +14155550123." in instructions
    assert '"Hi, this is Ada from the shop. How can I help?"' in instructions


def _call(config: Any) -> Any:
    from voiceagents.contracts.calls import CallContext

    return CallContext(
        call_sid="CA1",
        room="call_CA1",
        org_id=config.org_id,
        agent_id=config.agent_id,
        agent_version=1,
        from_number="+14155550123",
        to_number="+14155550100",
        started_at=datetime.now(UTC),
    )


class _Server:
    """What admission reads from livekit-agents' AgentServer."""

    def __init__(self) -> None:
        self.active_jobs: list[object] = []
        self.draining = False


class _Request:
    """A job request whose acceptance takes a while (assignment, process launch), like
    livekit-agents' JobRequest: the window in which livekit/agents#4884 over-assigns."""

    def __init__(self, server: _Server, room: str) -> None:
        self.server = server
        self.room = type("Room", (), {"name": room})()
        self.outcome = ""

    async def accept(self, **_: Any) -> None:
        await asyncio.sleep(0.01)
        self.server.active_jobs.append(self)
        self.outcome = "accepted"

    async def reject(self, *, terminate: bool = True) -> None:
        assert terminate is False  # another worker may take it
        self.outcome = "rejected"


async def test_a_burst_of_jobs_never_gets_past_max_calls() -> None:
    server = _Server()
    admission = Admission(max_calls=3)
    admission.bind(server)
    requests = [_Request(server, f"call_{n}") for n in range(10)]

    await asyncio.gather(*(admission.on_request(r) for r in requests))

    assert [r.outcome for r in requests].count("accepted") == 3
    assert admission.load() == pytest.approx(admission.target_load)  # full: LiveKit stops
    # What /metrics says (the autoscaler's input), read live from the admission.
    text = exposition(admission).decode()
    assert "\nactive_calls 3.0\n" in text
    assert "\ncapacity 3.0\n" in text
    assert "\nrejected_jobs_total 7.0\n" in text


async def test_load_is_the_exact_share_of_calls_and_a_draining_worker_takes_none() -> None:
    server = _Server()
    admission = Admission(max_calls=4, target_load=0.7)
    admission.bind(server)
    for room in ("call_a", "call_b", "call_c"):
        await admission.on_request(_Request(server, room))
    # 3 of 4: still under livekit-server's target load, so it keeps offering this worker jobs.
    assert admission.load() == pytest.approx(0.525)

    server.draining = True
    late = _Request(server, "call_b")
    await admission.on_request(late)
    assert late.outcome == "rejected"
