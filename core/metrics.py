"""Prometheus series of the worker, in one registry served by GET /metrics.

Counters are incremented where the thing happens (an event's outcome once it is written); the
queue gauges are read from the database when scraped, so every worker reports the same truth
about the shared queue.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

# No `<counter>_created` series: a gauge of start-up time per label set that doubles what is
# scraped and stored for nothing (Prometheus infers resets from the counters themselves). It is
# the client library's process-wide switch, and this process exports only this registry.
disable_created_metrics()


class WorkerMetrics:
    """Every series the worker exports, registered in a registry of its own, with the standard
    `process_*` series (resident memory, CPU, open files), which the README's memory targets are
    read from in production."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.events_claimed = Counter(
            "flavor_events_claimed", "Events claimed by this worker", ["kind"], registry=r
        )
        self.events_done = Counter(
            "flavor_events_done", "Events handled completely", ["kind"], registry=r
        )
        self.events_retried = Counter(
            "flavor_events_retried", "Events scheduled for a retry", ["kind"], registry=r
        )
        self.events_failed = Counter(
            "flavor_events_failed", "Events given up on", ["kind"], registry=r
        )
        self.events_expired = Counter(
            "flavor_events_expired", "Events expired before delivery", ["kind"], registry=r
        )
        self.deliveries = Counter(
            "flavor_deliveries", "Deliveries by channel and status", ["channel", "status"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "flavor_provider_request_seconds", "Latency of provider API requests", ["provider"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.pending_events = Gauge(
            "flavor_pending_events", "Due pending events in the queue", registry=r
        )
        self.oldest_pending_seconds = Gauge(
            "flavor_oldest_pending_seconds", "Age of the oldest due pending event", registry=r
        )
        self.pending_deliveries = Gauge(
            "flavor_pending_deliveries",
            "Open events (pending or being handled) with a message on this channel not yet handed over",
            ["channel"], registry=r,
        )
        self.oldest_pending_delivery_seconds = Gauge(
            "flavor_oldest_pending_delivery_seconds",
            "Age of the oldest open event with a message on this channel not yet handed over",
            ["channel"], registry=r,
        )
        self.job_runs = Counter(
            "flavor_job_runs", "Scheduled job runs by job and outcome", ["job", "outcome"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "flavor_provider_circuit_state", "Provider circuit: 0 closed, 1 open, 2 half-open (probing)",
            ["provider"], registry=r,
        )
        self.reconnects = Counter(
            "flavor_listener_reconnects", "Reconnections of the LISTEN connection", registry=r
        )


METRICS = WorkerMetrics()
