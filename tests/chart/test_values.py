"""The values schema is closed and described, the README table matches it, every LONGRUN_* setting is
reachable, and a change of configuration or secrets changes the pods' checksum annotations (so they roll)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from longrun_common.settings import Settings

from .helm import CHART, RELEASE, ROOT, HelmError, Manifest, named, pod_templates, render_base

pytestmark = pytest.mark.unit

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())


def chart_schema_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_schema", ROOT / "scripts" / "chart_schema.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def walk(node: Any, path: str = "", *, documented: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its key path; `documented`: only what the values table lists (not the fields of
    pass-through items such as EnvVar)."""
    if isinstance(node, dict):
        if "type" in node or "properties" in node:
            yield path, node
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}", documented=documented)
        items = node.get("items")
        if isinstance(items, dict) and (not documented or "description" in items):
            yield from walk(items, f"{path}[]", documented=documented)


def test_schema_and_readme_are_generated_and_current() -> None:
    module = chart_schema_module()
    schema_text, readme_text = module.expected()
    assert (CHART / "values.schema.json").read_text() == schema_text, "run `python scripts/chart_schema.py`"
    assert (CHART / "README.md").read_text() == readme_text, "run `python scripts/chart_schema.py`"


def test_readme_table_lists_every_schema_key_with_its_description() -> None:
    readme = (CHART / "README.md").read_text()
    for path, node in walk(SCHEMA, documented=True):
        if not path or (node.get("type") == "object" and "properties" in node and path != ".config"):
            continue
        if path.startswith(".config."):
            assert f"| `{path[1:]}` | {node['type']} | {node['description']}" in readme, path
        else:
            assert f"| `{path[1:]}` |" in readme and node["description"].replace("|", "/") in readme, path


def test_schema_is_closed_and_described_everywhere() -> None:
    for path, node in walk(SCHEMA):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '/'} is open"
        if path and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


@pytest.mark.parametrize("key", ["bogus", "gateway.bogus", "workers.keda.bogus", "config.no_such_setting",
                                 "secrets.keys.bogus", "ingress.hub.bogus", "monitoring.prometheusRule.bogus"])
def test_unknown_keys_are_rejected(key: str) -> None:
    with pytest.raises(HelmError, match="additional properties"):
        render_base(set_json={key: 1})


def test_unknown_keys_in_a_worker_set_are_rejected() -> None:
    with pytest.raises(HelmError, match="additional properties 'queue' not allowed"):
        render_base(set_json={"workers.sets": [{"name": "x", "queues": ["default"], "concurrency": 1,
                                                "queue": "typo"}]})


def test_setting_types_and_bounds_are_checked() -> None:
    with pytest.raises(HelmError, match="drain_seconds"):
        render_base(set_json={"config.drain_seconds": -1})
    with pytest.raises(HelmError, match="env"):
        render_base(set_json={"config.env": "staging"})


def test_every_setting_is_reachable() -> None:
    module = chart_schema_module()
    config = set(SCHEMA["properties"]["config"]["properties"])
    for name in Settings.model_fields:
        assert name in config or name in module.CHART_OWNED, f"LONGRUN_{name.upper()} cannot be set by the chart"
    assert config.isdisjoint(module.CHART_OWNED)


def test_config_reaches_every_container() -> None:
    manifests = render_base(set_json={"config.drain_seconds": 45.5, "config.maintenance": False,
                                      "config.key_prefix": "lr"})
    data = named(manifests, "ConfigMap", f"{RELEASE}-longrun-config")["data"]
    assert data["LONGRUN_DRAIN_SECONDS"] == "45.5"
    assert data["LONGRUN_MAINTENANCE"] == "false"
    assert Settings(drain_seconds=data["LONGRUN_DRAIN_SECONDS"], maintenance=data["LONGRUN_MAINTENANCE"]
                    ).maintenance is False  # what pydantic-settings reads back
    for owner, template in pod_templates(manifests):
        if "redis" in owner["metadata"]["name"]:
            continue
        for container in template["spec"]["containers"]:
            assert container["envFrom"][0]["configMapRef"]["name"].startswith(f"{RELEASE}-longrun-")


def checksums(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: {k: v for k, v in (t["metadata"].get("annotations") or {}).items()
                                    if k.startswith("checksum/")}
            for o, t in pod_templates(manifests) if o["kind"] == "Deployment"}


def test_config_and_secret_changes_roll_the_pods() -> None:
    base = checksums(render_base())
    assert base and all(set(sums) == {"checksum/config", "checksum/secret"} for sums in base.values())
    config_changed = checksums(render_base(set_json={"config.drain_seconds": 31}))
    secret_changed = checksums(render_base({"secrets.apiKeys": "acme:another-key"}))
    unrelated = checksums(render_base(set_json={"gateway.replicas": 5}))
    for name in base:
        assert config_changed[name]["checksum/config"] != base[name]["checksum/config"], name
        assert config_changed[name]["checksum/secret"] == base[name]["checksum/secret"], name
        assert secret_changed[name]["checksum/secret"] != base[name]["checksum/secret"], name
        assert secret_changed[name]["checksum/config"] == base[name]["checksum/config"], name
        assert unrelated[name] == base[name], name


def test_an_existing_secret_has_no_secret_checksum(ci_renders: dict[str, list[Manifest]]) -> None:
    for sums in checksums(ci_renders["external-secrets-values.yaml"]).values():
        assert set(sums) == {"checksum/config"}
