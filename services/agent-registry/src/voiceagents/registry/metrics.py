"""Prometheus metrics of one registry (its own registry, so several can run in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
)  # fmt: skip


class RegistryMetrics:
    def __init__(self) -> None:
        # Labelled children by (method, route, status): labels() is too slow for every request.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "registry_http_requests_total",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "registry_http_request_seconds",
            "Time to answer an HTTP request, by method and route",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.outbox_published = Counter(
            "registry_outbox_published_total",
            "Outbox events published to JetStream and projected into KV",
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "registry_outbox_pending",
            "Outbox events committed but not yet published (seen at the last relay pass)",
            registry=self.registry,
        )
        self.outbox_lag_seconds = Histogram(
            "registry_outbox_lag_seconds",
            "Commit of a write to its event published and KV updated",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.relay_failures = Counter(
            "registry_relay_failures_total",
            "Relay passes that stopped on a NATS or PostgreSQL error (retried)",
            registry=self.registry,
        )
        self.outbox_parked = Counter(
            "registry_outbox_parked_total",
            "Outbox events set aside because they can never be published (e.g. over max_payload)",
            registry=self.registry,
        )
        self.kv_writes = Counter(
            "registry_kv_writes_total",
            "KV writes by bucket and outcome (put, deleted, skipped_newer, unchanged)",
            ["bucket", "outcome"],
            registry=self.registry,
        )
        self.call_events = Counter(
            "registry_call_events_total",
            "Call events consumed, by kind and outcome (applied, duplicate, rejected, retried)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.toolvault_events = Counter(
            "registry_toolvault_events_total",
            "tool-vault events consumed, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.catalog_syncs = Counter(
            "registry_catalog_syncs_total",
            "Catalog syncs answered, by outcome",
            ["outcome"],
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(method, route, str(status)),
                self.request_seconds.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)
