"""The `vault` secret store: HashiCorp Vault KV v2 through hvac.

hvac is synchronous, so every call runs on a small thread pool, never on the event loop; each
thread has its own hvac client (requests sessions are not shared across threads) carrying the
current token. Auth is Kubernetes (production), AppRole or a token (compose). The token is
renewed at two thirds of its lease; a 403 means it expired or was revoked, so the store logs in
again once and retries. Every write is check-and-set (`options.cas`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import hvac
import hvac.exceptions
import msgspec
import requests
import structlog

from voiceagents.toolvault.store import StoreError, VersionConflict, Versioned

log = structlog.get_logger("voiceagents.toolvault.vault")

T = TypeVar("T")
VaultAuth = Literal["kubernetes", "approle", "token"]

_CAS_MISMATCH = "check-and-set"


class VaultConfig(msgspec.Struct, frozen=True, kw_only=True):
    addr: str
    auth: VaultAuth = "kubernetes"
    mount: str = "secret"
    path_prefix: str = "voiceagents"
    # kubernetes
    role: str = "tool-vault"
    kubernetes_mount: str = "kubernetes"
    jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    # approle
    approle_mount: str = "approle"
    role_id: str = ""
    secret_id: str = ""
    # token
    token: str = ""
    namespace: str | None = None
    verify: bool | str = True
    timeout_seconds: int = 5
    threads: int = 8


class VaultStore:
    name = "vault"

    def __init__(self, config: VaultConfig) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(config.threads, thread_name_prefix="vault")
        self._local = threading.local()
        self._token = config.token if config.auth == "token" else ""
        self._token_lock = threading.Lock()
        self._lease_seconds = 0
        self._renewable = False
        self._renewer: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._config.auth == "token":
            info = await self._run(lambda c: c.auth.token.lookup_self())
            self._lease_seconds = int(info["data"].get("ttl") or 0)
            self._renewable = bool(info["data"].get("renewable"))
        else:
            await self._run(self._login_sync, authenticate=False)
        self._renewer = asyncio.create_task(self._keep_renewed())

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def ready(self) -> bool:
        try:
            await self._run(lambda c: c.auth.token.lookup_self())
        except StoreError:
            return False
        return True

    # -- KV v2 -----------------------------------------------------------------------------------

    async def read(self, path: str) -> Versioned | None:
        full = self._full(path)

        def read(client: hvac.Client) -> Versioned | None:
            try:
                response = client.secrets.kv.v2.read_secret_version(
                    path=full, mount_point=self._config.mount, raise_on_deleted_version=True
                )
            except hvac.exceptions.InvalidPath:
                return None
            data = response["data"]
            return Versioned(
                value=msgspec.json.encode(data["data"]), version=int(data["metadata"]["version"])
            )

        return await self._run(read)

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        full = self._full(path)
        document = msgspec.json.decode(value)
        if not isinstance(document, dict):
            raise StoreError("the vault store keeps JSON objects only")

        def write(client: hvac.Client) -> int:
            try:
                response = client.secrets.kv.v2.create_or_update_secret(
                    path=full, secret=document, cas=cas, mount_point=self._config.mount
                )
            except hvac.exceptions.InvalidRequest as exc:
                if _CAS_MISMATCH in str(exc):
                    raise VersionConflict(f"{path} is no longer at version {cas}") from None
                raise
            return int(response["data"]["version"])

        return await self._run(write)

    async def delete(self, path: str) -> None:
        full = self._full(path)
        await self._run(
            lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(
                path=full, mount_point=self._config.mount
            )
        )

    def _full(self, path: str) -> str:
        prefix = self._config.path_prefix.strip("/")
        return f"{prefix}/{path}" if prefix else path

    # -- running hvac off the loop, with re-login on 403 ---------------------------------------

    async def _run(self, call: Callable[[hvac.Client], T], *, authenticate: bool = True) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call_sync, call, authenticate)

    def _call_sync(self, call: Callable[[hvac.Client], T], authenticate: bool) -> T:
        client = self._client()
        try:
            try:
                client.token = self._token
                return call(client)
            except hvac.exceptions.Forbidden:
                if not authenticate or self._config.auth == "token":
                    raise
                # Expired or revoked token (or a restarted Vault): log in again, once.
                self._relogin_sync(client.token)
                client.token = self._token
                return call(client)
        except VersionConflict:
            raise
        except hvac.exceptions.Forbidden as exc:
            raise StoreError("Vault denied the request (permission denied)") from exc
        except hvac.exceptions.VaultError as exc:
            raise StoreError(f"Vault request failed: {type(exc).__name__}") from exc
        except (requests.RequestException, OSError) as exc:
            raise StoreError(f"Vault unreachable: {type(exc).__name__}") from exc

    def _client(self) -> hvac.Client:
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = hvac.Client(
                url=self._config.addr,
                namespace=self._config.namespace,
                verify=self._config.verify,
                timeout=self._config.timeout_seconds,
            )
            self._local.client = client
        return client

    def _relogin_sync(self, stale_token: str) -> None:
        with self._token_lock:
            if self._token != stale_token:
                return  # another thread already logged in again
            self._login_sync(self._client())

    def _login_sync(self, client: hvac.Client) -> None:
        config = self._config
        if config.auth == "kubernetes":
            jwt = Path(config.jwt_path).read_text().strip()
            response = client.auth.kubernetes.login(
                role=config.role, jwt=jwt, use_token=False, mount_point=config.kubernetes_mount
            )
        elif config.auth == "approle":
            response = client.auth.approle.login(
                role_id=config.role_id,
                secret_id=config.secret_id,
                use_token=False,
                mount_point=config.approle_mount,
            )
        else:
            raise StoreError("token auth cannot log in again; give tool-vault a new token")
        auth: dict[str, Any] = response["auth"]
        self._token = auth["client_token"]
        self._lease_seconds = int(auth.get("lease_duration") or 0)
        self._renewable = bool(auth.get("renewable"))
        log.info("logged in to vault", auth=config.auth, lease_seconds=self._lease_seconds)

    async def _keep_renewed(self) -> None:
        while True:
            if self._lease_seconds <= 0:
                # A token without a TTL (or none yet): look again later in case that changes.
                await asyncio.sleep(60.0)
                continue
            await asyncio.sleep(max(1.0, self._lease_seconds * 2 / 3))
            try:
                if self._renewable:
                    response = await self._run(lambda c: c.auth.token.renew_self())
                    self._lease_seconds = int(response["auth"].get("lease_duration") or 0)
                elif self._config.auth != "token":
                    await self._run(self._login_sync, authenticate=False)
            except StoreError as exc:
                log.warning("vault token renewal failed", error=str(exc))
                if self._config.auth != "token":
                    try:
                        await self._run(self._login_sync, authenticate=False)
                    except StoreError as again:
                        log.error("vault login failed", error=str(again))
                        await asyncio.sleep(5.0)
