"""The baseline of bench_e2e: the minimal livekit-agents phone bot a user would write by hand.

The agent is hard-coded: no registry, no tool-vault, no gateway, no NATS, no tools, no call
events. It uses the same offline realtime model as the voice worker (`VA_WORKER_MODEL=offline`)
with time-to-first-audio 0, the same greeting and voice, and the same room options, so what
differs from our worker is the platform, not the model or livekit-agents' tuning. The greeting
is asked of the model ("Say exactly: ..."), as a hand-written realtime bot greets.

Admission is off (load always 0): the benchmark's ramp, not the worker, decides how many calls
run. Everything else is livekit-agents' defaults.

Run: `python bench/bare_worker.py start` with LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET,
BARE_AGENT_NAME and BARE_SCRIPT (a JSON `OfflineScript`) in the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from livekit import rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, room_io

from voiceagents.worker.offline_model import OfflineRealtimeModel, OfflineScript

GREETING = "Hello, this is Ada. How can I help you today?"
VOICE = "Puck"
SIP = [rtc.ParticipantKind.PARTICIPANT_KIND_SIP]

SCRIPT = msgspec.json.decode(Path(os.environ["BARE_SCRIPT"]).read_bytes(), type=OfflineScript)

# Port 0: its health endpoint on any free port, so it runs next to other workers.
server = AgentServer(load_fnc=lambda: 0.0, port=0)


@server.rtc_session(agent_name=os.environ.get("BARE_AGENT_NAME", "bare-agent"))
async def entrypoint(ctx: JobContext) -> None:
    model = OfflineRealtimeModel(script=SCRIPT, voice=VOICE, first_audio_ms=0.0)
    session: AgentSession[None] = AgentSession(
        llm=model, turn_handling={"turn_detection": "realtime_llm"}
    )
    await session.start(
        Agent(instructions="You are Ada, a friendly receptionist."),
        room=ctx.room,
        room_options=room_io.RoomOptions(
            participant_kinds=SIP,
            close_on_disconnect=True,
            text_output=room_io.TextOutputOptions(sync_transcription=False),
        ),
    )
    await ctx.wait_for_participant(kind=SIP)
    session.generate_reply(instructions=f"Say exactly: {GREETING}")


if __name__ == "__main__":
    cli.run_app(server)
