"""Prometheus metrics of one gateway (its own registry, so several can run in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Webhooks are answered in milliseconds; buckets resolve that range and the 2 s LiveKit budget.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.0, 2.5, 5.0,
)  # fmt: skip


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhook_seconds = Histogram(
            "gateway_webhook_seconds",
            "Time to answer a Twilio webhook, by endpoint and outcome",
            ["endpoint", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "gateway_incoming_stage_seconds",
            "Where an incoming call's answer time goes (signature, lookup, grant, livekit, twiml)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rooms_created = Counter(
            "gateway_rooms_created_total", "LiveKit rooms created for calls", registry=self.registry
        )
        self.rejections = Counter(
            "gateway_rejections_total",
            "Calls turned away with a polite hang-up, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.livekit_failures = Counter(
            "gateway_livekit_failures_total",
            "Calls answered with an apology because LiveKit failed or exceeded the budget",
            ["kind"],
            registry=self.registry,
        )
        self.active_calls = Gauge(
            "gateway_active_calls",
            "Calls this gateway bridged that have not ended",
            registry=self.registry,
        )
        self.agents_lost = Counter(
            "gateway_agents_lost_total",
            "Calls failed because their voice agent left mid-call (LiveKit webhook)",
            registry=self.registry,
        )
        self.events_published = Counter(
            "gateway_call_events_published_total",
            "Call events acknowledged by JetStream, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.events_failed = Counter(
            "gateway_call_events_failed_total",
            "Call events given up on after retries, by kind",
            ["kind"],
            registry=self.registry,
        )
