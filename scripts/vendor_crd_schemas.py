"""Turn CustomResourceDefinition YAML into the strict JSON schemas the chart tests validate against.

    python scripts/vendor_crd_schemas.py CRD.yaml [CRD.yaml ...]

Writes tests/chart/crd_schemas/<kind>-<group>-<version>.json for every served version: the CRD's
openAPIV3Schema with `additionalProperties: false` on every object that lists its properties and does not
preserve unknown fields (what the API server's pruning and `kubectl --validate=strict` enforce), so a
misspelt field in a rendered ScaledObject fails the test instead of vanishing in the cluster.
The vendored files name their source in `$comment`; the CRDs used are listed in tests/chart/crd_schemas/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "chart" / "crd_schemas"


def strict(node: Any) -> Any:
    """A copy of an OpenAPI v3 schema node with closed objects and no Kubernetes extensions."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    pattern = out.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern[1:]:
        # Go's RE2 takes inline flags anywhere; Python only at the start.
        out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def convert(path: Path) -> list[Path]:
    crd = yaml.safe_load(path.read_text())
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    written = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["$comment"] = f"{kind} {group}/{version['name']}, generated from {path.name}"
        # metadata is `type: object` in CRDs; the API server checks it, so do the same for the fields we use.
        schema["properties"]["metadata"] = {"type": "object"}
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
        target = OUT / f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"
        target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(target)
    return written


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in argv:
        for target in convert(Path(name)):
            print(target.relative_to(OUT.parents[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
