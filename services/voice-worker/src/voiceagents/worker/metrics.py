"""Prometheus metrics of the voice worker.

`active_calls`, `capacity` and `rejected_jobs_total` are the main process's admission counts,
read live when `/metrics` is scraped (`AdmissionCollector`): livekit-agents empties the
multiprocess directory when the worker starts, which would lose values the main process wrote
before. `call_setup_seconds` (dispatch → ready to greet, per stage) and `tool_calls_total` come
from the job processes through prometheus_client's multiprocess mode (the entry point sets
PROMETHEUS_MULTIPROC_DIR), so one `/metrics` shows every call's timings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from voiceagents.worker.admission import Admission

CALL_SETUP_SECONDS = Histogram(
    "call_setup_seconds",
    "Dispatch received -> stage done (config, credentials, tools, ready to greet)",
    ["stage"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
TOOL_CALLS = Counter("tool_calls", "Tool calls by outcome", ["outcome"])


class AdmissionCollector(Collector):
    """`active_calls` (an autoscaler adds workers before they fill), `capacity` (MAX_CALLS) and
    `rejected_jobs_total`, from the main process's admission at scrape time."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "active_calls",
            "Calls this worker is running or has accepted",
            value=self._admission.in_use(),
        )
        yield GaugeMetricFamily(
            "capacity",
            "Calls this worker admits at most (MAX_CALLS)",
            value=self._admission.max_calls,
        )
        yield CounterMetricFamily(
            "rejected_jobs",
            "Jobs refused because the worker was full or draining",
            value=self._admission.rejected,
        )


def exposition(admission: Admission) -> bytes:
    """The text `/metrics` answers: every process's metrics, then the admission counts."""
    processes: CollectorRegistry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        processes = CollectorRegistry()
        MultiProcessCollector(processes)  # type: ignore[no-untyped-call]
    main = CollectorRegistry()
    main.register(AdmissionCollector(admission))
    return generate_latest(processes) + generate_latest(main)
