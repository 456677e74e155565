"""Prometheus metrics of one tool-vault (its own registry, so several can run in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class ToolVaultMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.release_seconds = Histogram(
            "toolvault_release_seconds",
            "Time to answer a credential release, by outcome (ok or the error code)",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tool_errors = Counter(
            "toolvault_release_tool_errors_total",
            "Tools left out of a release, by error code",
            ["code"],
            registry=self.registry,
        )
        self.refreshes = Counter(
            "toolvault_oauth_refreshes_total",
            "OAuth token refreshes, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.callbacks = Counter(
            "toolvault_oauth_callbacks_total",
            "OAuth callbacks, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.revocations = Counter(
            "toolvault_call_revocations_total",
            "Calls whose grants were revoked because the call ended or failed",
            registry=self.registry,
        )
        self.events_failed = Counter(
            "toolvault_events_failed_total",
            "Audit events that could not be published after retries",
            registry=self.registry,
        )
