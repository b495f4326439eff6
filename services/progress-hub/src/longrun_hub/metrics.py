"""Prometheus metrics of one hub process, in a registry of their own (several apps may share a test process)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

INF = float("inf")

TRANSPORTS = ("ws", "mux", "sse")

# Delivery lag is milliseconds when all is well and seconds when it is not: buckets cover both.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FastCounter:
    """A counter for the per-frame hot path: a plain int (the event loop is the only writer), exported by
    `_FastCollector`. prometheus_client's own takes a lock per `inc`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class FastHistogram:
    """A histogram for the per-frame hot path (plain ints, no lock); same buckets and semantics as
    prometheus_client's (`le` is inclusive; the last bucket is +Inf)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = (*(float(b) for b in buckets), INF)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _FastCollector(Collector):
    """Exports the hot-path counters and histogram under their Prometheus names."""

    def __init__(self, metrics: HubMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("longrun_hub_events_delivered", "", labels=["transport"])
        yield CounterMetricFamily("longrun_hub_snapshots_sent", "", labels=["transport"])
        yield HistogramMetricFamily("longrun_hub_delivery_lag_seconds", "", labels=["transport"])

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        delivered = CounterMetricFamily("longrun_hub_events_delivered", "Event frames sent to clients",
                                        labels=["transport"])
        snapshots = CounterMetricFamily("longrun_hub_snapshots_sent", "Snapshot frames sent to clients",
                                        labels=["transport"])
        lag = HistogramMetricFamily("longrun_hub_delivery_lag_seconds",
                                    "Hub send time minus the event's ts, for live events", labels=["transport"])
        for t in TRANSPORTS:
            delivered.add_metric([t], m.delivered_by[t].value)
            snapshots.add_metric([t], m.snapshots_by[t].value)
            h = m.lag_by[t]
            cumulative, buckets = 0, []
            for bound, count in zip(h.bounds, h.counts, strict=True):
                cumulative += count
                buckets.append(('+Inf' if bound == INF else repr(bound), cumulative))
            lag.add_metric([t], buckets, h.sum)
        yield delivered
        yield snapshots
        yield lag


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
        self.websockets_accepted = Counter(
            "longrun_hub_websockets_accepted",
            "WebSockets accepted, by the protocol serving them (anything but lean: uvicorn changed)",
            ["protocol"], registry=r,
        )
        self.websockets_lean = self.websockets_accepted.labels("lean")
        self.websockets_plain = self.websockets_accepted.labels("uvicorn")
        self.connections_by = {t: self.connections.labels(t) for t in TRANSPORTS}
        # Counted per frame sent: plain ints, exported by a collector (same names, labels and buckets).
        self.delivered_by = {t: FastCounter() for t in TRANSPORTS}  # longrun_hub_events_delivered_total
        self.snapshots_by = {t: FastCounter() for t in TRANSPORTS}  # longrun_hub_snapshots_sent_total
        self.lag_by = {t: FastHistogram(LAG_BUCKETS) for t in TRANSPORTS}  # longrun_hub_delivery_lag_seconds
        r.register(_FastCollector(self))
        self.repair_gap = self.repairs.labels("gap")
        self.repair_reconnect = self.repairs.labels("reconnect")
        self.repair_reset = self.repairs.labels("reset")  # the job's seq went back (Redis lost its data)
