"""The production model: Gemini Live through livekit-plugins-google, and the agent's exact phrases
rendered by Gemini's speech generation (TTS) in the same prebuilt voice.

Gemini Live and Gemini TTS share the prebuilt voice names ("Puck", "Kore", ...), so a greeting
rendered by `gemini-*-tts` in the agent's voice sounds like the live model that follows it. The
rendering happens once per voice and text (see `speech.PhraseAudio`); if it fails, the worker
falls back to asking the live model to say the greeting word for word.
"""

from __future__ import annotations

from livekit.agents.types import NOT_GIVEN
from livekit.plugins import google

from voiceagents.contracts.agents import AgentRuntimeConfig

GREETING_TTS_MODEL = "gemini-2.5-flash-preview-tts"


def gemini_realtime_model(
    config: AgentRuntimeConfig, instructions: str, *, api_key: str | None = None
) -> google.realtime.RealtimeModel:
    """A Gemini Live model for one call; connects only when the session starts."""
    return google.realtime.RealtimeModel(
        instructions=instructions,
        model=config.model,
        voice=config.voice,
        language=config.language,
        api_key=api_key or NOT_GIVEN,
    )


class GeminiVoice:
    """Renders exact phrases with Gemini TTS in a Gemini Live voice."""

    def __init__(self, *, api_key: str | None = None, model: str = GREETING_TTS_MODEL) -> None:
        self._api_key = api_key
        self._model = model

    @property
    def cache_key(self) -> str:
        return f"gemini-tts:{self._model}"

    async def render(self, text: str, voice: str) -> tuple[int, bytes]:
        tts = google.beta.GeminiTTS(
            model=self._model,
            voice_name=voice,
            api_key=self._api_key or NOT_GIVEN,
        )
        try:
            frame = await tts.synthesize(text).collect()
        finally:
            await tts.aclose()
        return frame.sample_rate, bytes(frame.data)
