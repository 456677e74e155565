"""TEST STAND-IN for HashiCorp Vault — not Vault, and never used outside tests and benchmarks.

Vault cannot run on this machine, so the `vault` backend is tested against this small HTTP
server that speaks the documented subset of Vault's HTTP API that hvac uses
(https://developer.hashicorp.com/vault/api-docs):

- KV v2 (`/v1/<mount>/data/<path>`, `/v1/<mount>/metadata/<path>`): read (latest or
  `?version=N`), write with `options.cas` (400 "check-and-set parameter did not match the
  current version"), version numbers and metadata (`current_version`, `versions`), delete of
  metadata and all versions (204), 404 `{"errors": []}` for a missing path;
- tokens (`/v1/auth/token/lookup-self`, `/v1/auth/token/renew-self`) with TTL, renewal and
  expiry; requests without a live token, or outside the token's policy, get 403
  `{"errors": ["permission denied"]}`;
- `POST /v1/auth/kubernetes/login` (`role`, `jwt`) and `POST /v1/auth/approle/login`
  (`role_id`, `secret_id`) answering with an `auth` block.

Policies are lists of API paths with Vault's trailing-`*` glob, all capabilities granted.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_ALWAYS = ("auth/token/lookup-self", "auth/token/renew-self")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Token:
    policy: list[str]
    ttl: int
    max_ttl: int
    renewable: bool
    issued: float = field(default_factory=time.time)
    expires: float = 0.0

    def __post_init__(self) -> None:
        self.expires = self.issued + self.ttl if self.ttl else 0.0


@dataclass
class _Secret:
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)
    current: int = 0
    created_time: str = field(default_factory=_now_iso)
    updated_time: str = field(default_factory=_now_iso)


class VaultStandIn:
    """Run with `with VaultStandIn() as vault:`; `vault.url` is the address for hvac."""

    def __init__(self, *, mount: str = "secret", token_ttl: int = 3600) -> None:
        self.mount = mount
        self.token_ttl = token_ttl
        self._tokens: dict[str, _Token] = {}
        self._kv: dict[str, _Secret] = {}
        self._k8s_roles: dict[str, tuple[str, list[str]]] = {}
        self._approles: dict[str, tuple[str, list[str]]] = {}
        self._lock = threading.Lock()
        self.logins = 0
        self.renewals = 0
        self.renewed = threading.Event()
        self.writes = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> VaultStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- set-up, as an operator would configure Vault ------------------------------------------

    def create_token(
        self, policy: list[str], *, ttl: int | None = None, renewable: bool = True
    ) -> str:
        token = f"hvs.{secrets.token_urlsafe(24)}"
        ttl = self.token_ttl if ttl is None else ttl
        with self._lock:
            self._tokens[token] = _Token(policy, ttl, max(ttl * 4, ttl), renewable)
        return token

    def add_kubernetes_role(self, role: str, jwt: str, policy: list[str]) -> None:
        self._k8s_roles[role] = (jwt, policy)

    def add_approle(self, role_id: str, secret_id: str, policy: list[str]) -> None:
        self._approles[role_id] = (secret_id, policy)

    def revoke_all_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def token_count(self) -> int:
        return len(self._tokens)

    def current_version(self, path: str) -> int:
        secret = self._kv.get(path)
        return 0 if secret is None else secret.current

    def raw(self, path: str) -> dict[str, Any] | None:
        secret = self._kv.get(path)
        return None if secret is None or not secret.current else secret.versions[secret.current]

    # -- the HTTP API --------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        vault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: without this, delayed ACKs add ~40 ms.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _respond(self, status: int, body: dict[str, Any] | None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    self._respond(400, {"errors": ["failed to parse JSON input"]})
                    return
                parts = urlsplit(self.path)
                if method == "GET" and parse_qs(parts.query).get("list") == ["true"]:
                    method = "LIST"
                status, answer = vault.handle(
                    method,
                    parts.path.removeprefix("/v1/"),
                    parse_qs(parts.query),
                    body,
                    self.headers.get("X-Vault-Token", ""),
                )
                self._respond(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def do_LIST(self) -> None:
                self._handle("LIST")

        return Handler

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any] | None]:
        if method == "POST" and path == "auth/kubernetes/login":
            return self._login_kubernetes(body)
        if method == "POST" and path == "auth/approle/login":
            return self._login_approle(body)
        with self._lock:
            live = self._tokens.get(token)
            if live is not None and live.expires and live.expires < time.time():
                del self._tokens[token]
                live = None
            if live is None or not (path in _ALWAYS or _allowed(live.policy, path)):
                return 403, {"errors": ["permission denied"]}
            if path == "auth/token/lookup-self":
                return 200, self._lookup(token, live)
            if path == "auth/token/renew-self" and method == "POST":
                return self._renew(token, live, body)
            mount, _, rest = path.partition("/")
            kind, _, key = rest.partition("/")
            if mount != self.mount or not key:
                return 404, {"errors": [f"no handler for route {path!r}"]}
            if kind == "data":
                if method == "GET":
                    return self._read(key, query)
                if method == "POST":
                    return self._write(key, body)
            if kind == "metadata":
                if method == "GET":
                    return self._metadata(key)
                if method == "DELETE":
                    self._kv.pop(key, None)
                    return 204, None
            return 405, {"errors": [f"unsupported operation {method} {path}"]}

    def _auth_block(self, token: str, live: _Token) -> dict[str, Any]:
        return {
            "client_token": token,
            "accessor": uuid.uuid4().hex,
            "policies": ["default", "tool-vault"],
            "token_policies": ["default", "tool-vault"],
            "metadata": {},
            "lease_duration": live.ttl,
            "renewable": live.renewable,
        }

    def _login_kubernetes(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        role = self._k8s_roles.get(str(body.get("role", "")))
        if role is None or body.get("jwt") != role[0]:
            return 403, {"errors": ["permission denied"]}
        return self._issue(role[1])

    def _login_approle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        role = self._approles.get(str(body.get("role_id", "")))
        if role is None or body.get("secret_id") != role[0]:
            return 400, {"errors": ["invalid role or secret ID"]}
        return self._issue(role[1])

    def _issue(self, policy: list[str]) -> tuple[int, dict[str, Any]]:
        token = self.create_token(policy)
        self.logins += 1
        return 200, _envelope(auth=self._auth_block(token, self._tokens[token]))

    def _lookup(self, token: str, live: _Token) -> dict[str, Any]:
        remaining = int(live.expires - time.time()) if live.expires else 0
        return _envelope(
            data={
                "id": token,
                "policies": ["default", "tool-vault"],
                "ttl": remaining,
                "creation_ttl": live.ttl,
                "renewable": live.renewable,
                "explicit_max_ttl": 0,
                "num_uses": 0,
                "orphan": False,
                "path": "auth/token/create",
                "type": "service",
            }
        )

    def _renew(self, token: str, live: _Token, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not live.renewable:
            return 400, {"errors": ["lease is not renewable"]}
        increment = body.get("increment")
        ttl = live.ttl if increment is None else _seconds(increment)
        ceiling = live.issued + live.max_ttl
        live.expires = min(time.time() + ttl, ceiling)
        self.renewals += 1
        self.renewed.set()
        block = self._auth_block(token, live)
        block["lease_duration"] = int(live.expires - time.time())
        return 200, _envelope(auth=block)

    def _read(self, key: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        secret = self._kv.get(key)
        if secret is None or not secret.current:
            return 404, {"errors": []}
        wanted = int(query.get("version", ["0"])[0]) or secret.current
        version = secret.versions.get(wanted)
        if version is None:
            return 404, {"errors": []}
        metadata = {k: v for k, v in version.items() if k != "data"}
        return 200, _envelope(data={"data": version["data"], "metadata": metadata})

    def _write(self, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        data = body.get("data")
        if not isinstance(data, dict):
            return 400, {"errors": ["no data provided"]}
        secret = self._kv.get(key)
        current = 0 if secret is None else secret.current
        cas = (body.get("options") or {}).get("cas")
        if cas is not None and int(cas) != current:
            return 400, {"errors": ["check-and-set parameter did not match the current version"]}
        if secret is None:
            secret = self._kv[key] = _Secret()
        secret.current = current + 1
        secret.updated_time = _now_iso()
        metadata = {
            "created_time": secret.updated_time,
            "custom_metadata": None,
            "deletion_time": "",
            "destroyed": False,
            "version": secret.current,
        }
        secret.versions[secret.current] = {"data": data, **metadata}
        self.writes += 1
        return 200, _envelope(data=metadata)

    def _metadata(self, key: str) -> tuple[int, dict[str, Any]]:
        secret = self._kv.get(key)
        if secret is None:
            return 404, {"errors": []}
        return 200, _envelope(
            data={
                "cas_required": False,
                "created_time": secret.created_time,
                "current_version": secret.current,
                "custom_metadata": None,
                "delete_version_after": "0s",
                "max_versions": 0,
                "oldest_version": min(secret.versions, default=0),
                "updated_time": secret.updated_time,
                "versions": {
                    str(n): {
                        "created_time": v["created_time"],
                        "deletion_time": v["deletion_time"],
                        "destroyed": v["destroyed"],
                    }
                    for n, v in secret.versions.items()
                },
            }
        )


def _allowed(policy: list[str], path: str) -> bool:
    return any(
        path.startswith(rule[:-1]) if rule.endswith("*") else path == rule for rule in policy
    )


def _seconds(value: object) -> int:
    text = str(value)
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def _envelope(
    *, data: dict[str, Any] | None = None, auth: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": None,
        "auth": auth,
    }


def main() -> None:
    """Run the stand-in as its own process (benchmarks): print `{"url", "token"}` on one line,
    then serve until stdin closes. The token's policy covers `<mount>/*/voiceagents/*`."""
    import sys

    with VaultStandIn() as vault:
        token = vault.create_token(
            [f"{vault.mount}/data/voiceagents/*", f"{vault.mount}/metadata/voiceagents/*"]
        )
        print(json.dumps({"url": vault.url, "token": token}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
