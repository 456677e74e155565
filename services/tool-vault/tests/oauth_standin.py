"""TEST STAND-IN for an OAuth 2.0 provider (Google's role) — never used outside tests/benchmarks.

Speaks the parts of RFC 6749 and RFC 7636 tool-vault uses: an authorization endpoint that
redirects back with a code (the admin "consents" at once), and a token endpoint for the
`authorization_code` grant (client authentication, exact redirect URI, single-use code, PKCE
S256 verifier checked) and the `refresh_token` grant (rotates the refresh token; the old one
stops working). Errors are RFC 6749 §5.2 JSON (`invalid_grant`, `invalid_client`, ...).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    scope: str
    challenge: str
    method: str


@dataclass
class OAuthProviderStandIn:
    client_id: str = "toolvault-client"
    client_secret: str = field(default_factory=lambda: "client-secret-" + secrets.token_hex(8))
    access_token_seconds: int = 3600
    fail_refresh: bool = False
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    refresh_calls: int = 0
    issued_access_tokens: list[str] = field(default_factory=list)
    issued_refresh_tokens: list[str] = field(default_factory=list)
    _codes: dict[str, _Grant] = field(default_factory=dict)
    _refresh: dict[str, str] = field(default_factory=dict)  # refresh token -> scope
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def provider_config(self) -> dict[str, Any]:
        """tool-vault's provider entry for this stand-in (what an operator would configure)."""
        return {
            "authorize_url": f"{self.url}/authorize",
            "token_url": f"{self.url}/token",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorize_params": {"access_type": "offline", "prompt": "consent"},
        }

    def __enter__(self) -> OAuthProviderStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- the admin's browser ----------------------------------------------------------------

    def consent(self, authorization_url: str) -> tuple[str, str]:
        """What the browser does at the authorization URL: the (code, state) sent back."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
        location = self.authorize(query)
        back = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        return back["code"], back["state"]

    def authorize(self, query: dict[str, str]) -> str:
        self.authorize_requests.append(query)
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return f"{query.get('redirect_uri', '')}?{urlencode({'error': 'unauthorized_client'})}"
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Grant(
                client_id=query["client_id"],
                redirect_uri=query.get("redirect_uri", ""),
                scope=query.get("scope", ""),
                challenge=query.get("code_challenge", ""),
                method=query.get("code_challenge_method", "plain"),
            )
        return f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"

    # -- the token endpoint -----------------------------------------------------------------

    def token(
        self, form: dict[str, str], basic: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        client_id, client_secret = basic or (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
        if client_id != self.client_id or client_secret != self.client_secret:
            return 401, {"error": "invalid_client"}
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            with self._lock:
                grant = self._codes.pop(form.get("code", ""), None)
            if grant is None or grant.redirect_uri != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant"}
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if grant.method != "S256" or not verifier or expected != grant.challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE check failed"}
            return 200, self._issue(grant.scope)
        if grant_type == "refresh_token":
            with self._lock:
                self.refresh_calls += 1
                scope = self._refresh.pop(form.get("refresh_token", ""), None)
            if scope is None or self.fail_refresh:
                return 400, {"error": "invalid_grant"}
            return 200, self._issue(scope)
        return 400, {"error": "unsupported_grant_type"}

    def _issue(self, scope: str) -> dict[str, Any]:
        access = "ya29." + secrets.token_urlsafe(24)
        refresh = "1//" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[refresh] = scope
            self.issued_access_tokens.append(access)
            self.issued_refresh_tokens.append(refresh)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.access_token_seconds,
            "token_type": "Bearer",
            "scope": scope,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: without this, delayed ACKs add ~40 ms.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: dict[str, Any], location: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/authorize":
                    self._send(404, {"error": "not_found"})
                    return
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                self._send(302, {}, provider.authorize(query))

            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                basic = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    basic = (user, password)
                status, body = provider.token(form, basic)
                self._send(status, body)

        return Handler
