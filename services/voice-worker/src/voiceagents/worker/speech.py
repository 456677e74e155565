"""Exact sentences in the agent's voice: the greeting, the "one moment" filler.

A realtime model cannot be made to say a given text word for word (Gemini Live has no `say()`;
livekit-agents raises without a TTS). So the worker renders each exact phrase once per
renderer/voice/text, keeps the audio (memory and a disk cache shared by the worker's job
processes), and plays it with `session.say(text, audio=...)`: the caller hears exactly that
text, at once, and the transcript says exactly that text.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from livekit import rtc

log = structlog.get_logger("voiceagents.worker.speech")

FRAME_MS = 20


@dataclass(frozen=True)
class Phrase:
    """Rendered speech: 16-bit mono PCM."""

    text: str
    sample_rate: int
    pcm: bytes

    def frames(self) -> AsyncIterator[rtc.AudioFrame]:
        return frames(self.pcm, self.sample_rate)


class PhraseRenderer(Protocol):
    @property
    def cache_key(self) -> str:
        """Changes whenever the same text in the same voice would sound different."""

    async def render(self, text: str, voice: str) -> tuple[int, bytes]:
        """(sample rate, 16-bit mono PCM) of `text` spoken in `voice`."""


class PhraseAudio:
    """Rendered phrases, from memory, then the disk cache, then the renderer."""

    def __init__(self, renderer: PhraseRenderer, cache_dir: Path | None) -> None:
        self._renderer = renderer
        self._cache_dir = cache_dir
        self._memory: dict[str, Phrase] = {}
        self._inflight: dict[str, asyncio.Task[Phrase]] = {}

    async def get(self, text: str, voice: str) -> Phrase:
        key = hashlib.sha256(f"{self._renderer.cache_key}\0{voice}\0{text}".encode()).hexdigest()
        phrase = self._memory.get(key)
        if phrase is not None:
            return phrase
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.create_task(self._load(key, text, voice))
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: str, text: str, voice: str) -> Phrase:
        path = None if self._cache_dir is None else self._cache_dir / f"{key}.pcm"
        if path is not None and path.exists():
            data = path.read_bytes()
            phrase = Phrase(text, int.from_bytes(data[:4], "little"), data[4:])
        else:
            sample_rate, pcm = await self._renderer.render(text, voice)
            phrase = Phrase(text, sample_rate, pcm)
            if path is not None:
                _write_atomically(path, sample_rate.to_bytes(4, "little") + pcm)
        self._memory[key] = phrase
        return phrase


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full disk costs a re-render, nothing else
        log.warning("phrase cache not writable", error=type(exc).__name__)


async def frames(pcm: bytes, sample_rate: int) -> AsyncIterator[rtc.AudioFrame]:
    """16-bit mono PCM as 20 ms audio frames."""
    samples_per_frame = sample_rate * FRAME_MS // 1000
    step = samples_per_frame * 2
    for start in range(0, len(pcm), step):
        chunk = pcm[start : start + step]
        if len(chunk) < step:
            chunk = chunk + b"\x00" * (step - len(chunk))
        yield rtc.AudioFrame(chunk, sample_rate, 1, samples_per_frame)
