"""Twilio's `X-Twilio-Signature`, checked with twilio's own `RequestValidator` against the URL
Twilio requested: the configured public base URL plus the path and query as received. Behind a
TLS-terminating proxy the gateway sees `http://pod:8080/...` while Twilio signed
`https://voice.example.com/...`, so the request's own scheme and host are never used. The
validator accepts the URL with and without the default port, as Twilio documents."""

from __future__ import annotations

from urllib.parse import parse_qsl

from multidict import MultiDict
from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "x-twilio-signature"


class TwilioSignature:
    def __init__(self, auth_token: str, public_base_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._base = public_base_url.rstrip("/")

    def public_url(self, path: str, query: str) -> str:
        return f"{self._base}{path}?{query}" if query else f"{self._base}{path}"

    def check(
        self, path: str, query: str, body: bytes, signature: str | None
    ) -> MultiDict[str] | None:
        """The form parameters if the signature is valid for them, else None."""
        if not signature:
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        params: MultiDict[str] = MultiDict(parse_qsl(text, keep_blank_values=True))
        if not self._validator.validate(self.public_url(path, query), params, signature):
            return None
        return params
