"""OAuth connect and refresh (RFC 6749 + RFC 7636 PKCE, following RFC 9700's advice).

Providers are configuration: Google is built in (endpoints and offline-access parameters) and
needs only a client id and secret; another provider is one more entry in
`VA_TOOLVAULT_OAUTH_PROVIDERS`. The exchange and refresh use authlib's OAuth 2.0 client.

- start: a single-use `state` (random, 10 minutes) bound to org, agent and agent tool, stored
  by its SHA-256 in the secret store with the PKCE verifier; S256 challenge; the exact redirect
  URI; the scopes the tool declares; offline access.
- callback: the state is claimed with a check-and-set write (so it is used at most once, even
  across replicas), then the code is exchanged with the stored verifier and the tokens stored.
- refresh: when an access token expires within 5 minutes; one refresh per agent tool at a time
  (concurrent releases wait for it); written with check-and-set; a rotated refresh token
  replaces the old one in the same write. `invalid_grant` after another replica's refresh takes
  that replica's tokens.
- a refresh the store does not take: the provider may have rotated, and so spent, the stored
  refresh token, so the new tokens must not be lost. They are released at once and kept in
  memory, standing in for the stored ones, while a keeper writes them (check-and-set over the
  version they replace) until the store takes them, for as long as the process runs. A stored
  secret that changed meanwhile (a reconnect, another replica's refresh, a delete) wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import msgspec
import structlog
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.toolvault import OAuthStartRequest
from voiceagents.toolvault.store import (
    PendingAuthorization,
    SecretStore,
    StoreError,
    ToolSecret,
    VersionConflict,
    Versioned,
    state_path,
    tool_path,
)

log = structlog.get_logger("voiceagents.toolvault.oauth")

STATE_LIFETIME = timedelta(minutes=10)
MAX_RETURN_URL = 2048
REFRESH_MARGIN = timedelta(minutes=5)
# Pauses between attempts to store a refresh's tokens while the store fails; the last repeats.
# Short, so another replica rarely refreshes with the spent token after the store is back.
STORE_RETRY_SECONDS = (0.25, 0.5, 1.0, 2.0, 5.0)

GOOGLE: dict[str, Any] = {
    "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
    "token_url": "https://oauth2.googleapis.com/token",
    # Offline access (a refresh token), and consent so Google sends one on every connect.
    "authorize_params": {"access_type": "offline", "prompt": "consent"},
}
PRESETS: dict[str, dict[str, Any]] = {"google": GOOGLE}


class OAuthProvider(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    authorize_url: str
    token_url: str
    client_id: str
    client_secret: str
    # Extra authorization-request parameters (e.g. Google's access_type=offline).
    authorize_params: dict[str, str] = {}
    # Scopes always asked for (e.g. "offline_access" for OpenID-style providers).
    extra_scopes: list[str] = []
    token_endpoint_auth_method: Literal["client_secret_post", "client_secret_basic"] = (
        "client_secret_post"  # noqa: S105 - a method name, not a secret
    )

    def __repr__(self) -> str:
        return f"OAuthProvider(name={self.name!r})"


def load_providers(config: dict[str, dict[str, Any]]) -> dict[str, OAuthProvider]:
    """Providers from configuration, each filled in from its preset (if it has one)."""
    providers = {}
    for name, values in config.items():
        merged = {**PRESETS.get(name, {}), **values, "name": name}
        try:
            providers[name] = msgspec.convert(merged, OAuthProvider)
        except msgspec.ValidationError as exc:
            raise ValueError(f"provider {name!r}: {exc}") from exc
    return providers


class OAuthFailure(Exception):
    """A callback or refresh that did not work; `reason` is a short code, never a secret."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Connected(msgspec.Struct, frozen=True, kw_only=True):
    pending: PendingAuthorization
    version: int


class _Unsaved(msgspec.Struct, frozen=True):
    """A refresh's tokens the store has not taken yet, and the stored version they replace."""

    secret: ToolSecret
    replaces: int


def url_origin(url: str) -> str | None:
    """`scheme://host[:port]` of an absolute http(s) URL (lowercase, default port dropped), or
    None if `url` is not one (or carries a user name, which browsers and parsers read apart)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def state_digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


Clock = Callable[[], float]


class OAuthFlows:
    def __init__(
        self,
        store: SecretStore,
        providers: dict[str, OAuthProvider],
        redirect_uri: str,
        *,
        return_origins: frozenset[str] = frozenset(),
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._providers = providers
        self._redirect_uri = redirect_uri
        # Where the callback may send the admin's browser: these origins, and paths on
        # tool-vault's own (the redirect URI's) origin.
        origin = url_origin(redirect_uri)
        self._return_origins = return_origins | ({origin} if origin else set())
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[tuple[ToolSecret, int]]] = {}
        self._unsaved: dict[str, _Unsaved] = {}
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self.on_refreshed: Callable[[ToolSecret], None] = lambda _secret: None
        self.on_refresh_failed: Callable[[ToolSecret, str], None] = lambda _s, _r: None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _client(
        self, provider: OAuthProvider, scopes: list[str] | None = None
    ) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret,
            token_endpoint_auth_method=provider.token_endpoint_auth_method,
            scope=" ".join(scopes) if scopes else None,
            redirect_uri=self._redirect_uri,
            code_challenge_method="S256",
            timeout=10.0,
        )

    # -- start -------------------------------------------------------------------------------

    async def start(self, request: OAuthStartRequest) -> str:
        """The authorization URL to send the admin's browser to. ValueError on bad input."""
        provider = self._providers.get(request.provider)
        if provider is None:
            raise ValueError(f"provider: {request.provider!r} is not configured in tool-vault")
        tool_path(request.org_id, request.agent_tool_id)  # validates the ids
        if not request.agent_id:
            raise ValueError("agent_id: must be set")
        if request.return_url and not self.return_url_allowed(request.return_url):
            raise ValueError(
                "return_url: must be a path, or a URL on tool-vault's origin or one of "
                "VA_TOOLVAULT_RETURN_URL_ORIGINS"
            )
        scopes = list(dict.fromkeys([*request.scopes, *provider.extra_scopes]))
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters, within RFC 7636's 43..128
        pending = PendingAuthorization(
            org_id=request.org_id,
            agent_id=request.agent_id,
            agent_tool_id=request.agent_tool_id,
            tool_name=request.tool_name,
            provider=provider.name,
            scopes=scopes,
            code_verifier=verifier,
            redirect_uri=self._redirect_uri,
            return_url=request.return_url,
            expires_at=self._now() + STATE_LIFETIME,
        )
        await self._store.write(state_path(state_digest(state)), encode(pending), cas=0)
        async with self._client(provider, scopes) as client:
            url, _ = client.create_authorization_url(
                provider.authorize_url,
                state=state,
                code_verifier=verifier,
                **provider.authorize_params,
            )
        return str(url)

    def return_url_allowed(self, url: str) -> bool:
        """Not an open redirect: a path on tool-vault's origin, or a URL on an allowed origin."""
        # Browsers drop tabs and newlines and read a backslash as "/": "/\evil.example" is
        # another site.
        if not url or len(url) > MAX_RETURN_URL or any(c <= " " or c in "\\\x7f" for c in url):
            return False
        if url.startswith("/"):
            return not url.startswith("//")
        return url_origin(url) in self._return_origins

    # -- callback ----------------------------------------------------------------------------

    async def claim(self, state: str) -> PendingAuthorization:
        """Use up `state`: it must exist, be unused and unexpired. Raises OAuthFailure."""
        if not state or len(state) > 256:
            raise OAuthFailure("unknown_state", "state is missing or unknown")
        path = state_path(state_digest(state))
        current = await self._store.read(path)
        if current is None:
            raise OAuthFailure("unknown_state", "state is missing or unknown")
        pending = decode(current.value, PendingAuthorization)
        if pending.consumed:
            raise OAuthFailure("reused_state", "state was already used")
        try:
            await self._store.write(
                path, encode(msgspec.structs.replace(pending, consumed=True)), cas=current.version
            )
        except VersionConflict:
            raise OAuthFailure("reused_state", "state was already used") from None
        if pending.expires_at <= self._now():
            raise OAuthFailure("expired_state", "state expired; start the connection again")
        return pending

    async def finish(self, pending: PendingAuthorization, code: str) -> Connected:
        """Exchange the code (with the stored PKCE verifier) and store the tokens."""
        provider = self._providers.get(pending.provider)
        if provider is None:
            raise OAuthFailure("unknown_provider", "the provider is no longer configured")
        try:
            async with self._client(provider, pending.scopes) as client:
                token = await client.fetch_token(
                    provider.token_url,
                    code=code,
                    code_verifier=pending.code_verifier,
                    redirect_uri=pending.redirect_uri,
                )
        except OAuthError as exc:
            raise OAuthFailure(_error_code(exc), "the provider refused the code") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise OAuthFailure("provider_unreachable", type(exc).__name__) from None
        if not token.get("access_token"):
            raise OAuthFailure("no_access_token", "the provider returned no access token")
        path = tool_path(pending.org_id, pending.agent_tool_id)
        for _ in range(3):
            current = await self._store.read(path)
            previous = None if current is None else decode(current.value, ToolSecret)
            secret = ToolSecret(
                kind="oauth2",
                org_id=pending.org_id,
                agent_id=pending.agent_id,
                agent_tool_id=pending.agent_tool_id,
                provider=provider.name,
                access_token=str(token["access_token"]),
                # Some providers send a refresh token on first consent only: keep the old one.
                refresh_token=token.get("refresh_token")
                or (previous.refresh_token if previous else None),
                token_type=str(token.get("token_type") or "Bearer"),
                expires_at=_expires_at(token, self._clock),
                scopes=_granted_scopes(token, pending.scopes),
                updated_at=self._now(),
            )
            try:
                version = await self._store.write(
                    path, encode(secret), cas=0 if current is None else current.version
                )
            except VersionConflict:
                continue
            return Connected(pending=pending, version=version)
        raise OAuthFailure("conflict", "the tool's credentials kept changing; try again")

    async def forget(self, state: str) -> None:
        """Drop a used state (best effort: a used state is refused either way)."""
        try:
            await self._store.delete(state_path(state_digest(state)))
        except StoreError:
            log.warning("could not delete a used oauth state")

    # -- refresh -----------------------------------------------------------------------------

    def needs_refresh(self, secret: ToolSecret) -> bool:
        return secret.expires_at is not None and secret.expires_at - self._now() <= REFRESH_MARGIN

    async def fresh(self, path: str, stored: Versioned, secret: ToolSecret) -> ToolSecret:
        """`secret`, refreshed first if it expires within 5 minutes. Raises OAuthFailure."""
        unsaved = self._unsaved.get(path)
        if unsaved is not None and unsaved.replaces == stored.version:
            secret = unsaved.secret  # newer than the stored one, which may be spent
        if not self.needs_refresh(secret):
            return secret
        task = self._inflight.get(path)
        if task is None:
            task = asyncio.create_task(self._refresh(path, stored.version, secret))
            self._inflight[path] = task
            task.add_done_callback(lambda _t: self._inflight.pop(path, None))
        refreshed, _ = await asyncio.shield(task)
        return refreshed

    async def _refresh(self, path: str, version: int, secret: ToolSecret) -> tuple[ToolSecret, int]:
        # Another replica may have refreshed since this release read the secret.
        latest = await self._store.read(path)
        if latest is not None and latest.version != version:
            current = decode(latest.value, ToolSecret)
            if not self.needs_refresh(current):
                return current, latest.version
            secret, version = current, latest.version
        provider = self._providers.get(secret.provider or "")
        if provider is None:
            return self._failed(secret, "unknown_provider")
        if not secret.refresh_token:
            return self._failed(secret, "no_refresh_token")
        try:
            async with self._client(provider) as client:
                token = await client.refresh_token(
                    provider.token_url, refresh_token=secret.refresh_token
                )
        except OAuthError as exc:
            reason = _error_code(exc)
            if reason == "invalid_grant":
                # Another replica may have refreshed since the read above, rotating (and so
                # spending) the refresh token sent here: its tokens are good.
                latest = await self._store.read(path)
                if latest is not None and latest.version != version:
                    current = decode(latest.value, ToolSecret)
                    if not self.needs_refresh(current):
                        return current, latest.version
            return self._failed(secret, reason)
        except (httpx.HTTPError, ValueError) as exc:
            return self._failed(secret, f"provider_unreachable:{type(exc).__name__}")
        if not token.get("access_token"):
            return self._failed(secret, "no_access_token")
        refreshed = msgspec.structs.replace(
            secret,
            access_token=str(token["access_token"]),
            # A rotated refresh token replaces the old one in this same CAS write.
            refresh_token=token.get("refresh_token") or secret.refresh_token,
            token_type=str(token.get("token_type") or secret.token_type),
            expires_at=_expires_at(token, self._clock),
            updated_at=self._now(),
        )
        return await self._keep(path, version, refreshed, secret)

    async def _keep(
        self, path: str, version: int, refreshed: ToolSecret, base: ToolSecret
    ) -> tuple[ToolSecret, int]:
        """Store a refresh's tokens over `base`, the secret it started from (stored as
        `version`); if the store fails, a keeper stores them later."""
        unsaved = self._unsaved.get(path)
        if unsaved is not None and unsaved.secret == base:
            # This refresh started from tokens still waiting for the store: these replace them.
            self._unsaved[path] = _Unsaved(refreshed, unsaved.replaces)
            return refreshed, version
        while True:
            try:
                try:
                    new_version = await self._store.write(path, encode(refreshed), cas=version)
                    break
                except VersionConflict:
                    again = await self._store.read(path)
            except StoreError as exc:
                log.warning("could not store refreshed tokens; keeping them", error=str(exc))
                self._unsaved[path] = _Unsaved(refreshed, version)
                if path not in self._keepers:
                    self._keepers[path] = asyncio.create_task(self._keep_trying(path))
                return refreshed, version
            if again is None:
                return self._failed(refreshed, "deleted")
            theirs = decode(again.value, ToolSecret)
            if theirs != base:
                # Someone else wrote first (a reconnect or another replica's refresh): theirs wins.
                return theirs, again.version
            # What this refresh started from was stored meanwhile (by the keeper): go over it.
            version = again.version
        self.on_refreshed(refreshed)
        return refreshed, new_version

    async def _keep_trying(self, path: str) -> None:
        """Write the unsaved tokens of `path` until the store takes them or holds newer ones."""
        attempt = 0
        try:
            while path in self._unsaved:
                await asyncio.sleep(STORE_RETRY_SECONDS[min(attempt, len(STORE_RETRY_SECONDS) - 1)])
                attempt += 1
                unsaved = self._unsaved[path]
                try:
                    current = await self._store.read(path)
                    if current is not None and current.version == unsaved.replaces:
                        written = await self._store.write(
                            path, encode(unsaved.secret), cas=unsaved.replaces
                        )
                    elif (
                        current is not None and decode(current.value, ToolSecret) == unsaved.secret
                    ):
                        written = current.version  # the write that failed landed after all
                    else:
                        log.warning("unsaved refreshed tokens dropped: the stored secret changed")
                        del self._unsaved[path]
                        return
                except VersionConflict:
                    continue  # the next round reads what was written
                except StoreError as exc:
                    log.warning("refreshed tokens still not stored; retrying", error=str(exc))
                    continue
                self.on_refreshed(unsaved.secret)
                if self._unsaved[path] is unsaved:
                    del self._unsaved[path]
                else:
                    # A newer refresh replaced them meanwhile: it goes over what was just written.
                    self._unsaved[path] = _Unsaved(self._unsaved[path].secret, written)
        finally:
            self._keepers.pop(path, None)

    async def close(self) -> None:
        for keeper in self._keepers.values():
            keeper.cancel()
        await asyncio.gather(*self._keepers.values(), return_exceptions=True)
        if self._unsaved:
            log.error(
                "refreshed tokens lost at shutdown: the store never took them",
                agent_tools=len(self._unsaved),
            )

    def _failed(self, secret: ToolSecret, reason: str) -> tuple[ToolSecret, int]:
        self.on_refresh_failed(secret, reason)
        raise OAuthFailure(reason, "the access token could not be refreshed")


def _error_code(exc: OAuthError) -> str:
    # The provider's error code (RFC 6749 §5.2: a short ASCII token), never its description.
    code = str(getattr(exc, "error", "") or "oauth_error")
    return code if code.replace("_", "").isalnum() and len(code) <= 64 else "oauth_error"


def _expires_at(token: dict[str, Any], clock: Clock) -> datetime | None:
    if token.get("expires_in") is not None:
        return datetime.fromtimestamp(clock() + float(token["expires_in"]), UTC)
    if token.get("expires_at") is not None:
        return datetime.fromtimestamp(float(token["expires_at"]), UTC)
    return None


def _granted_scopes(token: dict[str, Any], asked: list[str]) -> list[str]:
    scope = token.get("scope")
    return str(scope).split() if scope else asked
