"""Prometheus metrics of the voice worker.

`active_calls` and `capacity` are what an autoscaler scales on (add workers before they fill);
`call_setup_seconds` is dispatch → ready to greet, per stage. Job processes write through
prometheus_client's multiprocess mode (the entry point sets PROMETHEUS_MULTIPROC_DIR), so the
worker's one `/metrics` shows every call's timings.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIVE_CALLS = Gauge(
    "active_calls", "Calls this worker is running or has accepted", multiprocess_mode="livemax"
)
CAPACITY = Gauge(
    "capacity", "Calls this worker admits at most (MAX_CALLS)", multiprocess_mode="livemax"
)
REJECTED_JOBS = Counter("rejected_jobs", "Jobs refused because the worker was full or draining")
CALL_SETUP_SECONDS = Histogram(
    "call_setup_seconds",
    "Dispatch received -> stage done (config, credentials, tools, ready to greet)",
    ["stage"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
TOOL_CALLS = Counter("tool_calls", "Tool calls by outcome", ["outcome"])
