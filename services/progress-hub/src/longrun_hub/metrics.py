"""Prometheus metrics of one hub process, in a registry of their own (several apps may share a test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TRANSPORTS = ("ws", "mux", "sse")

# Delivery lag is milliseconds when all is well and seconds when it is not: buckets cover both.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HubMetrics:
    """Everything the hub counts; children with labels are resolved once, not per event."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "longrun_hub_connections", "Open client connections", ["transport"], registry=r
        )
        self.subscriptions = Gauge(
            "longrun_hub_subscriptions", "Job channels this process subscribes to in Redis", registry=r
        )
        self.watchers = Gauge(
            "longrun_hub_watchers", "Client subscriptions to jobs (one per job per connection)", registry=r
        )
        self.delivered = Counter(
            "longrun_hub_events_delivered", "Event frames sent to clients", ["transport"], registry=r
        )
        self.snapshots = Counter(
            "longrun_hub_snapshots_sent", "Snapshot frames sent to clients", ["transport"], registry=r
        )
        self.coalesced = Counter(
            "longrun_hub_events_coalesced", "Progress events replaced by a newer one for a slow client", registry=r
        )
        self.replayed = Counter(
            "longrun_hub_events_replayed", "Events read from a job's stream (resume and repair)", registry=r
        )
        self.slow_clients = Counter(
            "longrun_hub_slow_clients_closed", "Clients closed because they could not keep up (1013)", registry=r
        )
        self.repairs = Counter(
            "longrun_hub_repairs", "Gap repairs of a job from its stream", ["reason"], registry=r
        )
        self.redis_reconnects = Counter(
            "longrun_hub_redis_reconnects", "Times the pub/sub listener lost Redis and reconnected", registry=r
        )
        self.lag = Histogram(
            "longrun_hub_delivery_lag_seconds",
            "Hub send time minus the event's ts, for live events",
            ["transport"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.connections_by = {t: self.connections.labels(t) for t in TRANSPORTS}
        self.delivered_by = {t: self.delivered.labels(t) for t in TRANSPORTS}
        self.snapshots_by = {t: self.snapshots.labels(t) for t in TRANSPORTS}
        self.lag_by = {t: self.lag.labels(t) for t in TRANSPORTS}
        self.repair_gap = self.repairs.labels("gap")
        self.repair_reconnect = self.repairs.labels("reconnect")
        self.repair_reset = self.repairs.labels("reset")  # the job's seq went back (Redis lost its data)
