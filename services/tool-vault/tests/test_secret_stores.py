"""One behaviour suite for both secret backends: `embedded` (PostgreSQL, envelope-encrypted) and
`vault` (hvac against the Vault API stand-in). Then what only one of them has: master-key
rotation for `embedded`; token auth, renewal and re-login for `vault`."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from voiceagents.toolvault.store import (
    ReleaseReadCache,
    SecretStore,
    StoreError,
    VersionConflict,
    Versioned,
    tool_path,
)
from voiceagents.toolvault.vault import VaultConfig, VaultStore

from .conftest import MASTER_KEY, embedded_store
from .vault_standin import VaultStandIn

pytestmark = pytest.mark.integration

POLICY = ["secret/data/voiceagents/*", "secret/metadata/voiceagents/*"]


def doc(**values: object) -> bytes:
    return msgspec.json.encode(values)


@pytest.fixture
def vault_server() -> Iterator[VaultStandIn]:
    with VaultStandIn() as server:
        yield server


@pytest.fixture(params=["embedded", "vault"])
async def store(
    request: pytest.FixtureRequest, embedded_dsn: str, vault_server: VaultStandIn
) -> AsyncIterator[SecretStore]:
    backend: SecretStore
    if request.param == "embedded":
        backend = embedded_store(embedded_dsn)
    else:
        backend = VaultStore(
            VaultConfig(
                addr=vault_server.url, auth="token", token=vault_server.create_token(POLICY)
            )
        )
    await backend.start()
    yield backend
    await backend.close()


def new_path() -> str:
    return tool_path(f"org-{secrets.token_hex(4)}", f"at-{secrets.token_hex(4)}")


# -- the shared suite ------------------------------------------------------------------------


async def test_a_written_secret_reads_back_with_its_version(store: SecretStore) -> None:
    path = new_path()

    version = await store.write(path, doc(token="abc"), cas=0)
    read = await store.read(path)

    assert version == 1
    assert read is not None and read.version == 1
    assert msgspec.json.decode(read.value) == {"token": "abc"}


async def test_a_path_never_written_reads_as_none(store: SecretStore) -> None:
    assert await store.read(new_path()) is None


async def test_each_write_is_a_new_version(store: SecretStore) -> None:
    path = new_path()
    v1 = await store.write(path, doc(n=1), cas=0)
    v2 = await store.write(path, doc(n=2), cas=v1)

    read = await store.read(path)

    assert (v1, v2) == (1, 2)
    assert read is not None and read.version == 2
    assert msgspec.json.decode(read.value) == {"n": 2}


async def test_a_write_against_a_stale_version_is_refused_and_changes_nothing(
    store: SecretStore,
) -> None:
    path = new_path()
    await store.write(path, doc(refresh="first"), cas=0)
    await store.write(path, doc(refresh="rotated"), cas=1)

    with pytest.raises(VersionConflict):
        await store.write(path, doc(refresh="stale"), cas=1)

    read = await store.read(path)
    assert read is not None and msgspec.json.decode(read.value) == {"refresh": "rotated"}


async def test_creating_what_already_exists_is_a_conflict(store: SecretStore) -> None:
    path = new_path()
    await store.write(path, doc(a=1), cas=0)

    with pytest.raises(VersionConflict):
        await store.write(path, doc(a=2), cas=0)


async def test_of_two_concurrent_writers_from_the_same_version_exactly_one_wins(
    store: SecretStore,
) -> None:
    path = new_path()
    await store.write(path, doc(v="base"), cas=0)

    results = await asyncio.gather(
        *(store.write(path, doc(v=f"writer-{i}"), cas=1) for i in range(5)),
        return_exceptions=True,
    )

    assert sum(isinstance(r, int) for r in results) == 1
    assert sum(isinstance(r, VersionConflict) for r in results) == 4


async def test_a_deleted_secret_is_gone_and_can_be_created_again(store: SecretStore) -> None:
    path = new_path()
    await store.write(path, doc(a=1), cas=0)

    await store.delete(path)
    await store.delete(path)  # idempotent

    assert await store.read(path) is None
    assert await store.write(path, doc(a=2), cas=0) == 1


async def test_the_store_reports_ready(store: SecretStore) -> None:
    assert await store.ready()


# -- the release-path read cache, over both backends ------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_release_path_read_sees_this_replicas_own_writes_and_deletes(
    store: SecretStore,
) -> None:
    cache = ReleaseReadCache(store, 60.0)
    path = new_path()
    assert await cache.read(path, cached=True) is None
    await cache.write(path, doc(token="first"), cas=0)
    await cache.write(path, doc(token="rotated"), cas=1)

    read = await cache.read(path, cached=True)

    assert read is not None and read.version == 2
    assert msgspec.json.decode(read.value) == {"token": "rotated"}
    await cache.delete(path)
    assert await cache.read(path, cached=True) is None


async def test_another_replicas_write_shows_on_the_release_path_once_the_cache_expires(
    store: SecretStore,
) -> None:
    clock = FakeClock()
    cache = ReleaseReadCache(store, 5.0, clock=clock)
    path = new_path()
    await cache.write(path, doc(token="first"), cas=0)
    await store.write(path, doc(token="rotated elsewhere"), cas=1)  # another replica

    stale = await cache.read(path, cached=True)
    fresh = await cache.read(path)  # what check-and-set writers read
    clock.now += 5.1
    expired = await cache.read(path, cached=True)

    assert stale is not None and stale.version == 1
    assert fresh is not None and fresh.version == 2
    assert expired is not None and msgspec.json.decode(expired.value) == {
        "token": "rotated elsewhere"
    }


async def test_a_cache_of_zero_seconds_always_reads_the_backend(store: SecretStore) -> None:
    cache = ReleaseReadCache(store, 0.0)
    path = new_path()
    await cache.write(path, doc(token="first"), cas=0)
    await store.write(path, doc(token="rotated elsewhere"), cas=1)

    read = await cache.read(path, cached=True)

    assert read is not None and read.version == 2


async def test_a_failed_write_forgets_the_cached_value(store: SecretStore) -> None:
    cache = ReleaseReadCache(store, 60.0)
    path = new_path()
    await cache.write(path, doc(token="first"), cas=0)
    await store.write(path, doc(token="rotated elsewhere"), cas=1)

    with pytest.raises(VersionConflict):
        await cache.write(path, doc(token="mine"), cas=1)
    read = await cache.read(path, cached=True)

    assert read is not None and read.version == 2


async def test_the_cache_forgets_its_oldest_entry_when_full(store: SecretStore) -> None:
    cache = ReleaseReadCache(store, 60.0, entries=3)
    paths = [new_path() for _ in range(4)]
    for path in paths:
        await cache.write(path, doc(token="first"), cas=0)
    for path in (paths[0], paths[-1]):
        await store.write(path, doc(token="rotated elsewhere"), cas=1)

    oldest = await cache.read(paths[0], cached=True)
    newest = await cache.read(paths[-1], cached=True)

    assert oldest is not None and oldest.version == 2  # evicted, so read again
    assert newest is not None and newest.version == 1


class ObservedStore:
    """A backend wrapper that counts reads, can fail them, and can hold a read's answer back
    (what it read stays what it read, as when a write lands while the answer is on its way)."""

    def __init__(self, backend: SecretStore) -> None:
        self._backend = backend
        self.name = backend.name
        self.reads = 0
        self.fail = False
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()
        self.read_finished = asyncio.Event()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool:
        return True

    async def read(self, path: str) -> Versioned | None:
        self.reads += 1
        try:
            if self.fail:
                raise StoreError("the backend is unreachable")
            found = await self._backend.read(path)
            if self.hold is not None:
                self.holding.set()
                await self.hold.wait()
            return found
        finally:
            self.read_finished.set()

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        return await self._backend.write(path, value, cas=cas)

    async def delete(self, path: str) -> None:
        await self._backend.delete(path)


async def cached_secret(
    store: SecretStore,
) -> tuple[FakeClock, ObservedStore, ReleaseReadCache, str]:
    """A 5 s release cache over `store` (reads observed, on a fake clock), holding version 1
    of a new secret at the returned path."""
    clock = FakeClock()
    observed = ObservedStore(store)
    cache = ReleaseReadCache(observed, 5.0, clock=clock)
    path = new_path()
    await cache.write(path, doc(token="first"), cas=0)
    return clock, observed, cache, path


async def served_version(cache: ReleaseReadCache, path: str, version: int) -> None:
    """Until the release path answers `version` (a background refresh has landed)."""
    async with asyncio.timeout(5):
        while True:
            read = await cache.read(path, cached=True)
            if read is not None and read.version == version:
                return
            await asyncio.sleep(0.01)


async def test_a_value_near_expiry_is_served_from_memory_while_one_read_refreshes_it(
    store: SecretStore,
) -> None:
    clock, observed, cache, path = await cached_secret(store)
    await store.write(path, doc(token="rotated elsewhere"), cas=1)  # another replica
    clock.now += 4.1  # past the refresh point (<= 80 % of 5 s), before expiry

    answers = await asyncio.gather(*(cache.read(path, cached=True) for _ in range(20)))
    await served_version(cache, path, 2)

    assert all(a is not None and a.version == 1 for a in answers)  # none waited for the backend
    assert observed.reads == 1  # one refresh for twenty releases
    clock.now += 4.9  # the refreshed value is younger than its own expiry
    still = await cache.read(path, cached=True)
    assert still is not None and still.version == 2


async def test_a_failed_refresh_keeps_the_value_until_it_expires(store: SecretStore) -> None:
    clock, observed, cache, path = await cached_secret(store)
    observed.fail = True
    clock.now += 4.1

    served = await cache.read(path, cached=True)
    async with asyncio.timeout(5):
        await observed.read_finished.wait()  # the refresh failed
    clock.now += 1.0

    assert served is not None and served.version == 1
    with pytest.raises(StoreError):
        await cache.read(path, cached=True)  # expired: the release path sees the outage


async def test_a_refresh_that_read_before_this_replicas_write_does_not_undo_it(
    store: SecretStore,
) -> None:
    clock, observed, cache, path = await cached_secret(store)
    observed.hold = asyncio.Event()
    clock.now += 4.1
    await cache.read(path, cached=True)  # starts a refresh, which reads version 1 and waits
    async with asyncio.timeout(5):
        await observed.holding.wait()

    await cache.write(path, doc(token="rotated here"), cas=1)
    observed.hold.set()
    await asyncio.sleep(0.05)
    read = await cache.read(path, cached=True)

    assert read is not None and read.version == 2
    assert msgspec.json.decode(read.value) == {"token": "rotated here"}


# -- embedded only ---------------------------------------------------------------------------


async def test_embedded_rows_hold_no_plaintext(embedded_dsn: str) -> None:
    store = embedded_store(embedded_dsn)
    await store.start()
    try:
        await store.write(new_path(), doc(token="planted-plaintext-value"), cas=0)
    finally:
        await store.close()

    conn = await asyncpg.connect(embedded_dsn)
    try:
        rows = await conn.fetch("SELECT * FROM toolvault_secrets")
    finally:
        await conn.close()
    assert rows
    assert all(b"planted-plaintext-value" not in bytes(r["ciphertext"]) for r in rows)
    assert all("planted" not in str(dict(r)) for r in rows)


async def test_embedded_master_key_rotation_rewraps_rows_and_the_old_key_can_go(
    embedded_dsn: str,
) -> None:
    old_only = embedded_store(embedded_dsn)
    await old_only.start()
    path = new_path()
    await old_only.write(path, doc(token="survives-rotation"), cas=0)
    await old_only.close()

    new_key = secrets.token_bytes(32)
    both = embedded_store(embedded_dsn, {"m1": MASTER_KEY, "m2": new_key}, active="m2")
    await both.start()
    assert await both.rewrap() == 1
    assert await both.rewrap() == 0
    await both.close()

    new_only = embedded_store(embedded_dsn, {"m2": new_key}, active="m2")
    await new_only.start()
    try:
        read = await new_only.read(path)
    finally:
        await new_only.close()
    assert read is not None and read.version == 1
    assert msgspec.json.decode(read.value) == {"token": "survives-rotation"}


async def test_embedded_a_row_moved_to_another_path_does_not_decrypt(embedded_dsn: str) -> None:
    store = embedded_store(embedded_dsn)
    await store.start()
    try:
        source, target = new_path(), new_path()
        await store.write(source, doc(token="org-a"), cas=0)
        await store.pool.execute(
            "UPDATE toolvault_secrets SET path = $2 WHERE path = $1", source, target
        )
        with pytest.raises(StoreError):
            await store.read(target)
    finally:
        await store.close()


async def test_embedded_a_row_under_an_unconfigured_key_is_an_error_not_garbage(
    embedded_dsn: str,
) -> None:
    store = embedded_store(embedded_dsn)
    await store.start()
    path = new_path()
    await store.write(path, doc(a=1), cas=0)
    await store.close()

    other = embedded_store(embedded_dsn, {"m9": secrets.token_bytes(32)}, "m9")
    await other.start()
    try:
        with pytest.raises(StoreError, match="m1"):
            await other.read(path)
    finally:
        await other.close()


# -- vault only ------------------------------------------------------------------------------


async def test_vault_writes_are_check_and_set_in_vault(vault_server: VaultStandIn) -> None:
    store = VaultStore(
        VaultConfig(addr=vault_server.url, auth="token", token=vault_server.create_token(POLICY))
    )
    await store.start()
    try:
        path = new_path()
        await store.write(path, doc(a=1), cas=0)
        await store.write(path, doc(a=2), cas=1)
    finally:
        await store.close()
    assert vault_server.current_version(f"voiceagents/{path}") == 2
    assert vault_server.raw(f"voiceagents/{path}") is not None


async def test_vault_kubernetes_login_and_relogin_after_the_token_is_revoked(
    vault_server: VaultStandIn, tmp_path: Path
) -> None:
    jwt_file = tmp_path / "token"
    jwt_file.write_text("service-account-jwt\n")
    vault_server.add_kubernetes_role("tool-vault", "service-account-jwt", POLICY)
    store = VaultStore(
        VaultConfig(
            addr=vault_server.url, auth="kubernetes", role="tool-vault", jwt_path=str(jwt_file)
        )
    )
    await store.start()
    try:
        path = new_path()
        await store.write(path, doc(a=1), cas=0)
        assert vault_server.logins == 1

        vault_server.revoke_all_tokens()  # expiry, revocation or a Vault restart look alike: 403
        read = await store.read(path)

        assert read is not None and read.version == 1
        assert vault_server.logins == 2
    finally:
        await store.close()


async def test_vault_approle_login(vault_server: VaultStandIn) -> None:
    vault_server.add_approle("role-id-1", "secret-id-1", POLICY)
    store = VaultStore(
        VaultConfig(
            addr=vault_server.url, auth="approle", role_id="role-id-1", secret_id="secret-id-1"
        )
    )
    await store.start()
    try:
        path = new_path()
        assert await store.write(path, doc(a=1), cas=0) == 1
        assert vault_server.logins == 1
    finally:
        await store.close()


async def test_vault_wrong_login_fails_start(vault_server: VaultStandIn) -> None:
    vault_server.add_approle("role-id-1", "secret-id-1", POLICY)
    store = VaultStore(
        VaultConfig(addr=vault_server.url, auth="approle", role_id="role-id-1", secret_id="wrong")
    )
    with pytest.raises(StoreError):
        await store.start()
    await store.close()


async def test_vault_paths_outside_the_policy_are_denied(vault_server: VaultStandIn) -> None:
    store = VaultStore(
        VaultConfig(
            addr=vault_server.url,
            auth="token",
            token=vault_server.create_token(["secret/data/elsewhere/*"]),
        )
    )
    await store.start()
    try:
        with pytest.raises(StoreError, match="permission denied"):
            await store.write(new_path(), doc(a=1), cas=0)
    finally:
        await store.close()


async def test_vault_token_is_renewed_before_it_expires(vault_server: VaultStandIn) -> None:
    vault_server.token_ttl = 3  # renewal at two thirds of the lease: after 2 s
    vault_server.add_approle("role-id-1", "secret-id-1", POLICY)
    store = VaultStore(
        VaultConfig(
            addr=vault_server.url, auth="approle", role_id="role-id-1", secret_id="secret-id-1"
        )
    )
    await store.start()
    try:
        assert await asyncio.to_thread(vault_server.renewed.wait, 30)
        assert vault_server.logins == 1
        assert await store.ready()
    finally:
        await store.close()


async def test_vault_unreachable_is_a_store_error() -> None:
    store = VaultStore(
        VaultConfig(addr="http://127.0.0.1:9", auth="token", token="hvs.x", timeout_seconds=1)
    )
    with pytest.raises(StoreError, match="unreachable"):
        await store.start()
    await store.close()
