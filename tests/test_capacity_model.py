"""docs/SCALING.md's tables are what bench/capacity.py's model computes from the doc's own measured inputs."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "SCALING.md"


@pytest.fixture(scope="module")
def capacity() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("capacity_bench", ROOT / "bench" / "capacity.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def table(name: str) -> list[list[str]]:
    """The rows (cells as text) of the table after `<!-- table: name -->` in the doc, header and rule left out."""
    text = DOC.read_text()
    start = text.index(f"<!-- table: {name} -->")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[2:]


def number(cell: str) -> float:
    match = re.search(r"[-\d.,]+", cell)
    assert match, cell
    return float(match.group().replace(",", ""))


def inputs() -> dict[str, float]:
    return {row[0]: number(row[1]) for row in table("inputs")}


def test_the_per_pod_throughput_is_the_models(capacity: ModuleType) -> None:
    given = inputs()
    costs = capacity.Costs(submit=given["CPU per submit (ms)"] / 1000, job=given["CPU per job run (ms)"] / 1000,
                           delivery=given["hub CPU per delivery (us)"] / 1e6)
    rows = {row[0]: row for row in table("model")}
    for cores in (1.0, 4.0):
        predicted = capacity.predict(costs, cores=cores, deliveries_per_job=given["deliveries per job"])
        row = rows[f"{cores:g} core" + ("s" if cores != 1 else "")]
        assert number(row[1]) == pytest.approx(predicted.submits_per_s, rel=0.01, abs=0.5)
        assert number(row[2]) == pytest.approx(predicted.jobs_per_s, rel=0.01, abs=0.5)
        assert number(row[3]) == pytest.approx(predicted.deliveries_per_s, rel=0.01, abs=0.5)


def test_the_load_at_each_scale_is_the_per_job_cost_times_the_rate(capacity: ModuleType) -> None:
    given = inputs()
    per_job = {"commands": given["Redis commands per job"], "kib": given["Redis KiB in per job"],
               "redis_cpu": given["Redis CPU per job (ms)"] / 1000, "commits": given["SQL commits per job"],
               "rows": given["SQL rows written per job"]}
    rows = table("scale")
    assert [row[0] for row in rows] == ["1x (the check run)", "10x", "100x", "1,000x"]
    base = number(rows[0][1])
    for row in rows:
        factor = number(row[0].split("x")[0])
        assert number(row[1]) == pytest.approx(base * factor, rel=0.01)
        load = capacity.scaled_load(per_job, number(row[1]))
        for column, name in enumerate(("commands", "kib", "redis_cpu", "commits", "rows"), start=2):
            assert number(row[column]) == pytest.approx(load[name], rel=0.02, abs=0.05), (row, name)
