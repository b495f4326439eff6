"""Reading Prometheus exposition text and the metrics table of docs/METRICS.md."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .servers import repo_root

ROW = re.compile(r"^\| `(longrun_[a-z_]+)` \| (\w+) \|([^|]*)\|([^|]+)\|")


@dataclass(frozen=True)
class Family:
    name: str  # as a user queries it: counters with `_total`
    type: str
    labels: frozenset[str]
    services: frozenset[str] = frozenset()


def documented() -> dict[str, Family]:
    """Every row of the table in docs/METRICS.md."""
    table: dict[str, Family] = {}
    for line in (repo_root() / "docs" / "METRICS.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, kind, labels, services = match.groups()
            table[name] = Family(name, kind, frozenset(filter(None, (x.strip() for x in labels.split(",")))),
                                 frozenset(x.strip() for x in services.split(",")))
    return table


def exported(text: str) -> dict[str, Family]:
    """The `longrun_*` families of a scrape, with the label names their samples carry."""
    result: dict[str, Family] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("longrun_") or family.name.endswith("_created"):
            continue  # `_created` series come with every counter and histogram (prometheus_client)
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {key for sample in family.samples for key in sample.labels if key not in ("le", "quantile")}
        result[name] = Family(name, family.type, frozenset(labels))
    return result


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.text


def check_against_docs(service: str, text: str, *, required: bool = True) -> dict[str, Family]:
    """Every exported `longrun_*` family is documented for `service` with its type and labels; with `required`,
    every family documented for `service` is exported."""
    docs = {name: fam for name, fam in documented().items() if service in fam.services}
    found = exported(text)
    undocumented = sorted(set(found) - set(docs))
    assert not undocumented, f"{service} exports metrics missing from docs/METRICS.md: {undocumented}"
    if required:
        missing = sorted(set(docs) - set(found))
        assert not missing, f"docs/METRICS.md lists {service} metrics it does not export: {missing}"
    for name, fam in found.items():
        assert fam.type == docs[name].type, f"{name}: exported as {fam.type}, documented as {docs[name].type}"
        if fam.labels:  # a labelled family without samples yet shows no label names
            assert fam.labels == docs[name].labels, f"{name}: labels {sorted(fam.labels)} vs docs"
    return found
