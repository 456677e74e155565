"""The `embedded` secret store: envelope-encrypted rows in PostgreSQL.

Each write encrypts the value with a fresh AES-256-GCM data key; the data key is wrapped
(AES-256-GCM) by a master key from the environment, whose id is kept on the row. Rotating the
master key = add the new key, make it active, run `rewrap` (rewraps data keys only), then drop
the old key. The path and version are authenticated data, so a row copied to another path or
replayed under another version does not decrypt.
"""

from __future__ import annotations

import os

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voiceagents.toolvault.store import StoreError, VersionConflict, Versioned

SCHEMA = """
CREATE TABLE IF NOT EXISTS toolvault_secrets (
    path        text PRIMARY KEY,
    version     bigint NOT NULL CHECK (version > 0),
    key_id      text NOT NULL,
    wrapped_key bytea NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS toolvault_secrets_key_id ON toolvault_secrets (key_id);
"""

_NONCE = 12


class EnvelopeCipher:
    """Encrypts values under per-row data keys wrapped by the active master key."""

    def __init__(self, master_keys: dict[str, bytes], active_key_id: str) -> None:
        if active_key_id not in master_keys:
            raise ValueError("the active master key id is not among the master keys")
        for key_id, key in master_keys.items():
            if len(key) != 32:
                raise ValueError(f"master key {key_id!r} is not 32 bytes")
        self._keys = {key_id: AESGCM(key) for key_id, key in master_keys.items()}
        self.active_key_id = active_key_id

    def seal(self, path: str, version: int, value: bytes) -> tuple[str, bytes, bytes, bytes]:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        ciphertext = AESGCM(data_key).encrypt(nonce, value, _aad(path, version))
        return self.active_key_id, self.wrap(path, data_key), nonce, ciphertext

    def open(
        self, path: str, version: int, key_id: str, wrapped: bytes, nonce: bytes, ciphertext: bytes
    ) -> bytes:
        data_key = self.unwrap(path, key_id, wrapped)
        try:
            return AESGCM(data_key).decrypt(nonce, ciphertext, _aad(path, version))
        except InvalidTag as exc:
            raise StoreError(f"stored value at {path} failed authentication") from exc

    def wrap(self, path: str, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        key = self._keys[self.active_key_id]
        return nonce + key.encrypt(nonce, data_key, _wrap_aad(self.active_key_id, path))

    def unwrap(self, path: str, key_id: str, wrapped: bytes) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            raise StoreError(f"master key {key_id!r} of {path} is not configured")
        try:
            return key.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _wrap_aad(key_id, path))
        except InvalidTag as exc:
            raise StoreError(f"data key of {path} failed authentication") from exc


def _aad(path: str, version: int) -> bytes:
    return f"toolvault/v1\x00{path}\x00{version}".encode()


def _wrap_aad(key_id: str, path: str) -> bytes:
    return f"toolvault/v1/key\x00{key_id}\x00{path}".encode()


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on every return to the pool (a round trip per read): the store
    never changes session state (no SET, LISTEN, advisory locks or open cursors)."""


async def migrate(dsn: str) -> None:
    """Create tool-vault's tables (idempotent)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


class EmbeddedStore:
    name = "embedded"

    def __init__(self, dsn: str, cipher: EnvelopeCipher, *, pool_size: int = 8) -> None:
        self._dsn = dsn
        self._cipher = cipher
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the embedded store is not started")
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            command_timeout=5.0,
            reset=_keep_session,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ready(self) -> bool:
        try:
            async with self.pool.acquire() as conn:
                return bool(
                    await conn.fetchval("SELECT to_regclass('toolvault_secrets') IS NOT NULL")
                )
        except (OSError, asyncpg.PostgresError, StoreError):
            return False

    async def read(self, path: str) -> Versioned | None:
        try:
            row = await self.pool.fetchrow(
                "SELECT version, key_id, wrapped_key, nonce, ciphertext"
                " FROM toolvault_secrets WHERE path = $1",
                path,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"PostgreSQL read failed: {type(exc).__name__}") from exc
        if row is None:
            return None
        version = int(row["version"])
        value = self._cipher.open(
            path, version, row["key_id"], row["wrapped_key"], row["nonce"], row["ciphertext"]
        )
        return Versioned(value=value, version=version)

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        version = cas + 1
        key_id, wrapped, nonce, ciphertext = self._cipher.seal(path, version, value)
        try:
            if cas == 0:
                status = await self.pool.execute(
                    "INSERT INTO toolvault_secrets"
                    " (path, version, key_id, wrapped_key, nonce, ciphertext)"
                    " VALUES ($1, 1, $2, $3, $4, $5) ON CONFLICT (path) DO NOTHING",
                    path,
                    key_id,
                    wrapped,
                    nonce,
                    ciphertext,
                )
            else:
                status = await self.pool.execute(
                    "UPDATE toolvault_secrets SET version = $2, key_id = $3, wrapped_key = $4,"
                    " nonce = $5, ciphertext = $6, updated_at = now()"
                    " WHERE path = $1 AND version = $7",
                    path,
                    version,
                    key_id,
                    wrapped,
                    nonce,
                    ciphertext,
                    cas,
                )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"PostgreSQL write failed: {type(exc).__name__}") from exc
        if not status.endswith(" 1"):
            raise VersionConflict(f"{path} is no longer at version {cas}")
        return version

    async def delete(self, path: str) -> None:
        try:
            await self.pool.execute("DELETE FROM toolvault_secrets WHERE path = $1", path)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"PostgreSQL delete failed: {type(exc).__name__}") from exc

    async def rewrap(self, batch: int = 200) -> int:
        """Rewrap every data key not under the active master key; the number of rows rewrapped.

        Values and versions are untouched, so it runs safely beside live traffic."""
        done = 0
        active = self._cipher.active_key_id
        while True:
            rows = await self.pool.fetch(
                "SELECT path, key_id, wrapped_key FROM toolvault_secrets"
                " WHERE key_id <> $1 LIMIT $2",
                active,
                batch,
            )
            if not rows:
                return done
            for row in rows:
                data_key = self._cipher.unwrap(row["path"], row["key_id"], row["wrapped_key"])
                status = await self.pool.execute(
                    "UPDATE toolvault_secrets SET key_id = $2, wrapped_key = $3"
                    " WHERE path = $1 AND key_id = $4 AND wrapped_key = $5",
                    row["path"],
                    active,
                    self._cipher.wrap(row["path"], data_key),
                    row["key_id"],
                    row["wrapped_key"],
                )
                done += status.endswith(" 1")
