"""`toolvault.v1.release`: a voice worker's call grant in, the call's tool credentials out,
sealed to the worker's ephemeral X25519 key (libsodium sealed box).

Checks, in order: the request parses; the grant's signature (key by `kid`), audience, issuer and
expiry; the call has not ended (a release waits while tool-vault is still catching up on call
ends, see call_ends.py); the grant's agent exists in the KV mirror, is active and belongs
to the grant's org. Then per tool: bound to that agent, connected, refreshed if it expires within
5 minutes. A tool that fails gets its own typed error; the others are still released.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

import msgspec
import structlog
from nacl.public import PublicKey, SealedBox

from voiceagents.contracts.agents import ToolBinding
from voiceagents.contracts.calls import CallGrantClaims
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.grants import GrantRejected, GrantVerifier
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.toolvault import (
    CredentialReleaseReply,
    CredentialReleaseRequest,
    CredentialsReleased,
    ReleasedCredentials,
    ReleaseError,
    ReleaseErrorCode,
    ToolCredentials,
)
from voiceagents.toolvault.events import AuditPublisher, new_event_id, now
from voiceagents.toolvault.metrics import ToolVaultMetrics
from voiceagents.toolvault.oauth import OAuthFailure, OAuthFlows
from voiceagents.toolvault.revocations import Revocations
from voiceagents.toolvault.store import ReleaseReadCache, StoreError, ToolSecret, tool_path

log = structlog.get_logger("voiceagents.toolvault.release")

MAX_TOOLS = 64
# While the call-end follower catches up after a failure, a release waits this long for it (the
# worker gives up after 2 s), then is refused as `unavailable` rather than risk an ended call.
CATCH_UP_WAIT_SECONDS = 1.0


class ReleaseService:
    def __init__(
        self,
        *,
        grants: GrantVerifier,
        revocations: Revocations,
        mirror: ConfigMirror,
        store: ReleaseReadCache,
        oauth: OAuthFlows,
        audit: AuditPublisher,
        metrics: ToolVaultMetrics,
    ) -> None:
        self._grants = grants
        self._revocations = revocations
        self._mirror = mirror
        self._store = store
        self._oauth = oauth
        self._audit = audit
        self._metrics = metrics

    async def handle(self, data: bytes) -> bytes:
        started = time.perf_counter()
        reply, outcome = await self._answer(data)
        self._metrics.release_seconds.labels(outcome).observe(time.perf_counter() - started)
        return encode(reply)

    async def _answer(self, data: bytes) -> tuple[CredentialReleaseReply, str]:
        try:
            request = decode(data, CredentialReleaseRequest)
        except msgspec.ValidationError as exc:
            return _refused("bad_request", f"invalid release request: {exc}"), "bad_request"
        claims: CallGrantClaims | None = None
        try:
            worker_key = _worker_key(request.worker_public_key)
            if not request.agent_tool_ids or len(request.agent_tool_ids) > MAX_TOOLS:
                raise _Refusal("bad_request", f"agent_tool_ids: give 1 to {MAX_TOOLS} ids")
            claims = self._grants.verify(request.grant)
            if not await self._revocations.wait_current(CATCH_UP_WAIT_SECONDS):
                raise _Refusal("unavailable", "tool-vault is catching up on ended calls; try again")
            if self._revocations.is_revoked(claims.call_sid):
                raise _Refusal("call_ended", "the call has ended")
            bindings = self._bindings(claims)
        except (GrantRejected, _Refusal) as exc:
            self._audit_release(claims, request.agent_tool_ids, "denied", exc.code)
            log.info(
                "release denied",
                code=exc.code,
                call_sid=claims.call_sid if claims else None,
                agent_tool_ids=request.agent_tool_ids,
            )
            return _refused(exc.code, exc.message), exc.code

        wanted = list(dict.fromkeys(request.agent_tool_ids))
        # Tools are read (and refreshed) concurrently: a release costs its slowest tool.
        results = await asyncio.gather(*(self._tool(claims, bindings, t) for t in wanted))
        released = [r for r in results if isinstance(r, ToolCredentials)]
        tool_errors = [r for r in results if isinstance(r, ReleaseError)]
        for error in tool_errors:
            self._metrics.tool_errors.labels(error.code).inc()
        sealed = SealedBox(worker_key).encrypt(encode(ReleasedCredentials(credentials=released)))
        outcome = "ok" if released or not tool_errors else "denied"
        self._audit_release(
            claims,
            [c.agent_tool_id for c in released],
            outcome,
            tool_errors[0].code if tool_errors else None,
        )
        log.info(
            "credentials released",
            call_sid=claims.call_sid,
            agent_id=claims.agent_id,
            released=[c.agent_tool_id for c in released],
            tool_errors={e.agent_tool_id: e.code for e in tool_errors},
        )
        reply = CredentialReleaseReply(
            sealed_credentials=base64.b64encode(sealed).decode(), tool_errors=tool_errors
        )
        return reply, "ok" if not tool_errors else "partial"

    def _bindings(self, claims: CallGrantClaims) -> dict[str, ToolBinding]:
        agent = self._mirror.agent(claims.agent_id)
        if agent is None or agent.org_id != claims.org_id:
            raise _Refusal("not_bound", "the grant's agent is not in the grant's organization")
        if not agent.is_active:
            raise _Refusal("not_bound", "the grant's agent is not active")
        return {binding.agent_tool_id: binding for binding in agent.tools}

    async def _tool(
        self, claims: CallGrantClaims, bindings: dict[str, ToolBinding], agent_tool_id: str
    ) -> ToolCredentials | ReleaseError:
        binding = bindings.get(agent_tool_id)
        if binding is None:
            return ReleaseError(
                code="not_bound",
                message="the tool is not bound to this call's agent",
                agent_tool_id=agent_tool_id,
            )
        return await self._credentials(claims, binding)

    async def _credentials(
        self, claims: CallGrantClaims, binding: ToolBinding
    ) -> ToolCredentials | ReleaseError:
        tool_id = binding.agent_tool_id
        if binding.auth_type == "none":
            return ToolCredentials(agent_tool_id=tool_id, kind="none")
        try:
            path = tool_path(claims.org_id, tool_id)
            stored = await self._store.read(path, cached=True)
        except (StoreError, ValueError) as exc:
            log.warning("secret store read failed", agent_tool_id=tool_id, error=str(exc))
            return ReleaseError(
                code="unavailable", message="the secret store is unavailable", agent_tool_id=tool_id
            )
        if stored is None:
            return _not_connected(tool_id)
        secret = decode(stored.value, ToolSecret)
        if secret.kind != binding.auth_type:
            return _not_connected(tool_id)
        if secret.kind == "api_key":
            return ToolCredentials(agent_tool_id=tool_id, kind="api_key", secrets=secret.secrets)
        if not secret.access_token:
            return _not_connected(tool_id)
        try:
            secret = await self._oauth.fresh(path, stored, secret)
        except OAuthFailure as exc:
            return ReleaseError(
                code="refresh_failed",
                message=f"the access token could not be refreshed ({exc.reason})",
                agent_tool_id=tool_id,
            )
        except StoreError as exc:
            log.warning("secret store failed during refresh", agent_tool_id=tool_id, error=str(exc))
            return ReleaseError(
                code="unavailable", message="the secret store is unavailable", agent_tool_id=tool_id
            )
        return ToolCredentials(
            agent_tool_id=tool_id,
            kind="oauth2",
            access_token=secret.access_token,
            token_type=secret.token_type,
            expires_at=secret.expires_at,
        )

    def _audit_release(
        self,
        claims: CallGrantClaims | None,
        agent_tool_ids: list[str],
        outcome: str,
        error_code: ReleaseErrorCode | None,
    ) -> None:
        if claims is None:
            # No verified grant: nothing trustworthy to attribute the attempt to beyond a log.
            return
        self._audit.publish(
            CredentialsReleased(
                event_id=new_event_id(),
                org_id=claims.org_id,
                at=now(),
                agent_id=claims.agent_id,
                call_sid=claims.call_sid,
                agent_tool_ids=agent_tool_ids,
                outcome="ok" if outcome == "ok" else "denied",
                error_code=error_code,
            )
        )


class _Refusal(Exception):
    def __init__(self, code: ReleaseErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ReleaseErrorCode = code
        self.message = message


def _worker_key(value: str) -> PublicKey:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise _Refusal("bad_request", "worker_public_key: must be base64 of a 32-byte X25519 key")
    return PublicKey(raw)


def _refused(code: ReleaseErrorCode, message: str) -> CredentialReleaseReply:
    return CredentialReleaseReply(error=ReleaseError(code=code, message=message))


def _not_connected(agent_tool_id: str) -> ReleaseError:
    return ReleaseError(
        code="not_connected",
        message="the tool has no stored credentials; an admin must connect it",
        agent_tool_id=agent_tool_id,
    )
