"""`python -m voiceagents.worker start` — run the voice worker (livekit-agents CLI: start, dev)."""

from __future__ import annotations

import os
import tempfile

# Job processes report call timings through prometheus_client's multiprocess mode, which must
# be chosen before prometheus_client is first imported (livekit-agents imports it).
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="voiceagents-worker-metrics-")
)

from livekit.agents import cli

from voiceagents.worker.server import build_server
from voiceagents.worker.settings import Settings

server = build_server(Settings.from_env())

if __name__ == "__main__":
    cli.run_app(server)
