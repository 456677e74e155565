"""STAND-IN for Google's OAuth 2.0 endpoints, so `make demo` connects the calendar through the
real consent flow (registry → tool-vault → provider → tool-vault's callback) without Google.

The "admin" consents at once: `/authorize` redirects back with a code; `/token` exchanges it
(PKCE S256 checked, client secret checked) for the access token the Google Calendar stand-in
accepts. Refresh hands out the same access token again.
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
class OAuthProviderStandIn:
    access_token: str
    client_id: str = "devstack-client"
    client_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    # code -> (redirect_uri, PKCE challenge, scope)
    _codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def provider_config(self) -> dict[str, Any]:
        """tool-vault's `VA_TOOLVAULT_OAUTH_PROVIDERS` entry for this stand-in."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorize_url": f"{self.url}/authorize",
            "token_url": f"{self.url}/token",
        }

    def start(self) -> OAuthProviderStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def authorize(self, query: dict[str, str]) -> str:
        """The consent: the URL the browser is sent back to (with a code and the state)."""
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = (
                query["redirect_uri"],
                query.get("code_challenge", ""),
                query.get("scope", ""),
            )
        return f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"

    def token(self, form: dict[str, str], basic_auth: str | None) -> tuple[int, dict[str, Any]]:
        client_secret = form.get("client_secret")
        if basic_auth is not None:
            client_secret = base64.b64decode(basic_auth).decode().split(":", 1)[1]
        if client_secret != self.client_secret:
            return 401, {"error": "invalid_client"}
        scope = ""
        if form.get("grant_type") == "authorization_code":
            with self._lock:
                issued = self._codes.pop(form.get("code", ""), None)
            if issued is None or issued[0] != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant"}
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != issued[1]:
                return 400, {"error": "invalid_grant", "error_description": "PKCE check failed"}
            scope = issued[2]
        elif form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        body = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "refresh-" + secrets.token_hex(8),
        }
        return 200, body | ({"scope": scope} if scope else {})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/authorize":
                    self._json(404, {"error": "not_found"})
                    return
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                self.send_response(302)
                self.send_header("Location", provider.authorize(query))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                auth = self.headers.get("Authorization", "")
                basic = auth.removeprefix("Basic ") if auth.startswith("Basic ") else None
                self._json(*provider.token(form, basic))

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # requests carry codes and secrets: no access log

        return Handler
