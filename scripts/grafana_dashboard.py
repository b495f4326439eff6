"""Generate charts/longrun/dashboards/longrun.json: `python scripts/grafana_dashboard.py [--check]`.

The dashboard is data, written here as a list of rows of panels so that its queries are easy to read and review;
tests/test_prometheus.py runs every query against a real Prometheus scraping a running stack, and checks that
the committed JSON is what this script generates (`--check` does the same from the command line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "charts" / "longrun" / "dashboards" / "longrun.json"
RATE = "$__rate_interval"

# (title, unit, kind, [(expr, legend)], description); kind: "ts" (time series) or "stat".
Panel = tuple[str, str, str, list[tuple[str, str]], str]

ROWS: list[tuple[str, list[Panel]]] = [
    ("Jobs", [
        ("Jobs finished by task", "ops", "ts",
         [(f"sum by (task) (rate(longrun_jobs_finished_total[{RATE}]))", "{{task}}")],
         "Attempts ended per second, by task (every outcome)."),
        ("Outcomes", "ops", "ts",
         [(f"sum by (outcome) (rate(longrun_jobs_finished_total[{RATE}]))", "{{outcome}}")],
         "succeeded, failed, cancelled, retrying, drained, fenced."),
        ("Submitted by task", "ops", "ts",
         [(f"sum by (task) (rate(longrun_jobs_submitted_total[{RATE}]))", "{{task}}")],
         "Jobs accepted by the gateways."),
        ("Run time p50 / p95 by task", "s", "ts",
         [(f"histogram_quantile(0.5, sum by (le, task) (rate(longrun_job_run_duration_seconds_bucket[{RATE}])))",
           "p50 {{task}}"),
          (f"histogram_quantile(0.95, sum by (le, task) (rate(longrun_job_run_duration_seconds_bucket[{RATE}])))",
           "p95 {{task}}")],
         "Run time of one attempt."),
    ]),
    ("Queues", [
        ("Queue depth", "short", "ts",
         [("sum by (queue, status) (max by (queue, status, tenant) (longrun_queue_jobs))", "{{queue}} {{status}}")],
         "Active jobs from SQL (max across gateways: each reports the same truth)."),
        ("Oldest waiting job", "s", "ts",
         [("max by (queue) (longrun_queue_oldest_age_seconds)", "{{queue}}")],
         "How long the longest-waiting due job of each queue has waited. Alert: LongrunQueueBacklogOld."),
        ("Queue wait p95 by task", "s", "ts",
         [(f"histogram_quantile(0.95, sum by (le, task) (rate(longrun_job_queue_wait_seconds_bucket[{RATE}])))",
           "{{task}}")],
         "From submit (or the retry's due time) until a worker started the attempt."),
        ("Queued by tenant", "short", "ts",
         [('sum by (tenant) (max by (queue, tenant) (longrun_queue_jobs{status="queued"}))', "{{tenant}}")],
         "Who is waiting."),
    ]),
    ("Running and stuck", [
        ("Running jobs", "short", "ts",
         [("sum by (task) (longrun_jobs_running)", "{{task}}")],
         "Attempts running now, over every worker."),
        ("Seconds since last progress report", "s", "ts",
         [("max by (task) (longrun_job_seconds_since_report)", "{{task}}")],
         "The stuck-job signal: the least recent report among running jobs. Alert: LongrunJobStuck."),
        ("Progress reports", "ops", "ts",
         [(f"sum(rate(longrun_progress_reports_published_total[{RATE}]))", "published"),
          (f"sum(rate(longrun_progress_reports_coalesced_total[{RATE}]))", "coalesced")],
         "Events published after coalescing, and calls folded into them."),
        ("Workers per queue", "short", "stat",
         [("sum by (queue) (longrun_worker_queue_consumers)", "{{queue}}")],
         "Workers consuming each queue. Alert: LongrunNoWorkers."),
    ]),
    ("Failures", [
        ("Retries by reason", "ops", "ts",
         [(f"sum by (reason) (rate(longrun_job_retries_total[{RATE}]))", "{{reason}}")],
         "transient, timeout, lost (worker vanished), drained (worker shut down), error."),
        ("Dead letters", "short", "ts",
         [("max by (task) (longrun_dead_letters)", "{{task}}")],
         "Failed jobs waiting in GET /v1/dead-letters. Alert: LongrunDeadLettersGrowing."),
        ("Oldest dead letter", "s", "stat",
         [("max(longrun_dead_letter_oldest_age_seconds)", "oldest")],
         "Age of the oldest dead letter."),
        ("Redis and database", "short", "stat",
         [("min(longrun_redis_up)", "redis"), ("min(longrun_database_up)", "database")],
         "1 when every gateway reaches them. Alerts: LongrunRedisDown, LongrunDatabaseDown."),
    ]),
    ("Hub and gateway", [
        ("Hub connections", "short", "ts",
         [("sum by (transport) (longrun_hub_connections)", "{{transport}}")],
         "Open WebSocket (ws, mux) and SSE connections."),
        ("Hub delivery lag p50 / p99", "s", "ts",
         [(f"histogram_quantile(0.5, sum by (le) (rate(longrun_hub_delivery_lag_seconds_bucket[{RATE}])))", "p50"),
          (f"histogram_quantile(0.99, sum by (le) (rate(longrun_hub_delivery_lag_seconds_bucket[{RATE}])))", "p99")],
         "Hub send time minus the event's publish time. Alert: LongrunHubDeliveryLag."),
        ("Gateway latency p95 by route", "s", "ts",
         [(f"histogram_quantile(0.95, sum by (le, route) "
           f"(rate(longrun_gateway_request_duration_seconds_bucket[{RATE}])))", "{{route}}")],
         "Request latency by route template."),
        ("Gateway requests by status", "reqps", "ts",
         [(f"sum by (status) (rate(longrun_gateway_requests_total[{RATE}]))", "{{status}}")],
         "Requests per second by HTTP status."),
    ]),
]


def panel(panel_id: int, x: int, y: int, spec: Panel) -> dict[str, Any]:
    title, unit, kind, queries, description = spec
    targets = [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"}}
               for i, (expr, legend) in enumerate(queries)]
    body: dict[str, Any] = {
        "id": panel_id, "title": title, "description": description,
        "type": "timeseries" if kind == "ts" else "stat",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 6, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
    }
    if kind == "ts":
        body["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    else:
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return body


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for row_title, row in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id, y = next_id + 1, y + 1
        for i, spec in enumerate(row):
            panels.append(panel(next_id, 6 * i, y, spec))
            next_id += 1
        y += 8
    return {
        "uid": "longrun-overview",
        "title": "Longrun",
        "description": "Jobs, queues, workers, failures, the progress hub and the gateway (docs/METRICS.md).",
        "tags": ["longrun"],
        "timezone": "utc",
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Data source", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python scripts/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
