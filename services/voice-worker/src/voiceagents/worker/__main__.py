"""`python -m voiceagents.worker start` — run the voice worker (livekit-agents CLI: start, dev)."""

from __future__ import annotations

import os
import tempfile


def main() -> None:
    # Job processes report call timings through prometheus_client's multiprocess mode, which is
    # chosen when prometheus_client is first imported (livekit-agents imports it): set it first.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="voiceagents-metrics-")
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

    from livekit.agents import cli

    from voiceagents.worker.logs import configure_logging
    from voiceagents.worker.server import build_server
    from voiceagents.worker.settings import Settings

    configure_logging()
    cli.run_app(build_server(Settings.from_env()))


if __name__ == "__main__":
    main()
