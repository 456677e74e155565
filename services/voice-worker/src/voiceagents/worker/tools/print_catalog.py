"""`make catalog`: print the tool catalog exactly as the worker reports it to the registry.

The `tools` of the `CatalogSyncRequest` the worker sends on `registry.v1.catalog.sync`, encoded
by the same codec, pretty-printed: every tool with its functions (JSON Schema parameters, OAuth
scopes, retry and redaction flags), config schema and auth. Needs no running stack; the tool
packages are the worker's (`VA_WORKER_TOOL_PACKAGES`, default the built-in tools).
"""

from __future__ import annotations

import os
import sys

import msgspec

from voiceagents.contracts.codec import encode
from voiceagents.contracts.tools import CatalogSyncRequest
from voiceagents.worker.settings import Settings
from voiceagents.worker.tools.discovery import catalog, discover


def catalog_json() -> bytes:
    # Only the tool packages matter here; dev mode skips the checks of the worker's secrets.
    settings = Settings.from_env({**os.environ, "VA_WORKER_DEV_MODE": "true"})
    request = CatalogSyncRequest(worker_id="catalog", tools=catalog(discover(settings.packages)))
    tools = msgspec.json.decode(encode(request))["tools"]
    return msgspec.json.format(msgspec.json.encode(tools), indent=2)


if __name__ == "__main__":
    sys.stdout.buffer.write(catalog_json() + b"\n")
