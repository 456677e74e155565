"""The greeting: the agent's template with its name, word for word, before anything else."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from voiceagents.contracts.calls import TranscriptTurn
from voiceagents.worker.call import greet
from voiceagents.worker.offline_model import OfflineScript, OfflineVoice, ScriptTurn
from voiceagents.worker.speech import Phrase, PhraseAudio

pytestmark = pytest.mark.unit

SCRIPT = OfflineScript(turns=[ScriptTurn(when="hours", say="We are open nine to five.")])


def assistant_lines(call: Any) -> list[str]:
    return [
        item.text_content
        for item in call.session.history.items
        if item.type == "message" and item.role == "assistant"
    ]


async def rendered(text: str) -> asyncio.Future[Phrase]:
    future: asyncio.Future[Phrase] = asyncio.get_running_loop().create_future()
    future.set_result(await PhraseAudio(OfflineVoice(), None).get(text, "Puck"))
    return future


async def test_the_greeting_is_the_exact_template_and_comes_first(text_call: Any) -> None:
    call = await text_call(SCRIPT)
    config = call.state.config

    await greet(call.session, config, await rendered(config.greeting_text()), wait=1.0)
    await call.session.run(user_input="What are your hours?")

    assert assistant_lines(call) == [
        "Hi, this is Ada from the shop. How can I help?",
        "We are open nine to five.",
    ]
    first_event = call.published[0]
    assert isinstance(first_event, TranscriptTurn)
    assert first_event.entry.role == "agent"
    assert first_event.entry.text == "Hi, this is Ada from the shop. How can I help?"


async def test_without_greeting_audio_the_model_is_asked_to_say_it_word_for_word(
    text_call: Any,
) -> None:
    call = await text_call(SCRIPT)
    config = call.state.config
    never: asyncio.Future[Phrase] = asyncio.get_running_loop().create_future()

    await greet(call.session, config, never, wait=0.01)
    await call.session.run(user_input="What are your hours?")

    assert assistant_lines(call)[0] == "Hi, this is Ada from the shop. How can I help?"


async def test_greeting_audio_is_rendered_once_per_voice_and_text(tmp_path: Any) -> None:
    renders: list[tuple[str, str]] = []

    class CountingVoice(OfflineVoice):
        async def render(self, text: str, voice: str) -> tuple[int, bytes]:
            renders.append((text, voice))
            return await super().render(text, voice)

    first = PhraseAudio(CountingVoice(), tmp_path)
    await asyncio.gather(first.get("Hello", "Puck"), first.get("Hello", "Puck"))
    # Another job process of the same worker: served from the disk cache.
    again = await PhraseAudio(CountingVoice(), tmp_path).get("Hello", "Puck")
    await first.get("Hello", "Kore")

    assert renders == [("Hello", "Puck"), ("Hello", "Kore")]
    assert again.pcm == (await first.get("Hello", "Puck")).pcm


class _Handle:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def finish(self) -> None:
        for callback in self.callbacks:
            callback(self)


class _Input:
    audio = object()  # the caller's audio is attached

    def __init__(self) -> None:
        self.enabled: list[bool] = []

    def set_audio_enabled(self, enabled: bool) -> None:
        self.enabled.append(enabled)


class _Session:
    """Records what `greet` asks of livekit's AgentSession."""

    def __init__(self) -> None:
        self.input = _Input()
        self.handle = _Handle()
        self.said: list[str] = []

    def say(self, text: str, **_: Any) -> _Handle:
        self.said.append(text)
        return self.handle


@pytest.mark.parametrize(("interruptible", "heard"), [(False, [False, True]), (True, [])])
async def test_the_model_hears_the_caller_during_the_greeting_only_if_the_agent_allows_it(
    make_config: Any, interruptible: bool, heard: list[bool]
) -> None:
    config = make_config(greeting_interruptible=interruptible)
    session = _Session()

    await greet(session, config, await rendered(config.greeting_text()), wait=1.0)
    session.handle.finish()  # the greeting has been played out

    assert session.said == [config.greeting_text()]
    assert session.input.enabled == heard
