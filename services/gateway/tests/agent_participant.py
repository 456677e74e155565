"""A voice agent's LiveKit participant and nothing else: joins a room with an agent-kind token,
says so on stdout, and stays until it is killed (the test SIGKILLs it mid-call), told to leave
(a line on stdin: a clean disconnect, as a worker that finished its call), or removed by LiveKit
(its room deleted).

`python agent_participant.py <livekit ws url> <token>`
"""

from __future__ import annotations

import asyncio
import sys

from livekit import rtc


async def main(url: str, token: str) -> None:
    room = rtc.Room()
    removed = asyncio.Event()
    room.on("disconnected", lambda _reason: removed.set())
    await room.connect(url, token)
    print("joined", flush=True)
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    told = asyncio.ensure_future(stdin.readline())
    gone = asyncio.ensure_future(removed.wait())
    await asyncio.wait([told, gone], return_when=asyncio.FIRST_COMPLETED)
    if told.done():
        await room.disconnect()
        print("left", flush=True)
    told.cancel()
    gone.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
