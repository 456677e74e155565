"""The call's LiveKit room: created with the agent dispatch in one request, deleted at the end.

One `LiveKitAPI` (one aiohttp session, kept-alive connections) serves every call. LiveKit's
CreateRoom returns the existing room when the name is taken and then adds no dispatch, so a
second gateway replica answering the same CallSid cannot create a second dispatch either.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import aiohttp
from livekit import api

from voiceagents.contracts.calls import CallContext, DispatchMetadata
from voiceagents.contracts.codec import encode

_TOKEN_TTL_SECONDS = 3600
_TOKEN_RENEW_BEFORE_SECONDS = 600


class CallRooms:
    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        api_secret: str,
        agent_name: str,
        empty_timeout_seconds: int,
        request_timeout_seconds: float,
    ) -> None:
        # livekit-api passes `timeout=None` per request, which disables the session's timeout;
        # every request is bounded with asyncio.timeout instead.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
        )
        self._timeout = request_timeout_seconds
        self._url = url
        self._api_key = api_key
        self._api_secret = api_secret
        self._token_expires = 0.0
        self.api = self._client()
        # Per-room admin requests (ListParticipants needs a token for that one room) are rare:
        # this client signs a token per request.
        self._per_room = api.LiveKitAPI(
            url, api_key, api_secret, session=self._session, failover=False
        )
        self._agent_name = agent_name
        self._empty_timeout = empty_timeout_seconds

    def _client(self) -> api.LiveKitAPI:
        """A client with one pre-signed server token (room create/admin), renewed well before
        it expires: signing a fresh token for every request costs ~0.13 ms of CPU per call."""
        if time.monotonic() < self._token_expires - _TOKEN_RENEW_BEFORE_SECONDS:
            return self.api
        token = (
            api.AccessToken(self._api_key, self._api_secret)
            .with_ttl(timedelta(seconds=_TOKEN_TTL_SECONDS))
            .with_grants(api.VideoGrants(room_create=True, room_admin=True, room_list=True))
            .to_jwt()
        )
        self._token_expires = time.monotonic() + _TOKEN_TTL_SECONDS
        self.api = api.LiveKitAPI.with_token(
            token, self._url, session=self._session, failover=False
        )
        return self.api

    async def create(self, call: CallContext, grant: str) -> api.Room:
        """Create `call.room` with the call context as metadata and an explicit dispatch to the
        voice worker whose metadata carries the context and the call grant."""
        request = api.CreateRoomRequest(
            name=call.room,
            empty_timeout=self._empty_timeout,
            departure_timeout=5,
            metadata=encode(call).decode(),
            agents=[
                api.RoomAgentDispatch(
                    agent_name=self._agent_name,
                    metadata=encode(DispatchMetadata(call=call, grant=grant)).decode(),
                )
            ],
        )
        async with asyncio.timeout(self._timeout):
            return await self._client().room.create_room(request)

    async def delete(self, room: str) -> bool:
        """Delete the room; False if it was already gone."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._client().room.delete_room(api.DeleteRoomRequest(room=room))
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                return False
            raise
        return True

    async def participants(self, room: str) -> list[api.ParticipantInfo] | None:
        """Who is in the room now; None if the room is gone."""
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._per_room.room.list_participants(
                    api.ListParticipantsRequest(room=room)
                )
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                return None
            raise
        return list(response.participants)

    async def aclose(self) -> None:
        await self.api.aclose()
        await self._per_room.aclose()
        await self._session.close()
