#!/usr/bin/env bash
# `make images`: build Longrun's OCI images here with podman, from Debian and the host's wheels; no registry.
#
#   scripts/images.sh [all|app|support]     all (default) = app + support
#
#   localhost/longrun-base:bookworm    Debian bookworm minbase + python3 + ca-certificates (debootstrap; built
#                                      once, skipped while it exists; `podman rmi` it to refresh)
#   localhost/longrun:$IMAGE_TAG       the one Longrun image (gateway, hub, worker, Flower, migrations); also
#                                      tagged :latest. IMAGE_TAG defaults to the workspace version.
#   localhost/longrun-redis:7          Redis and PostgreSQL from Debian's packages, for `make rehearse` and the
#   localhost/longrun-postgres:15      tests' testcontainers path
#
# Installs podman, runc and debootstrap (Debian packages, as root) when missing. Podman runs with the project's
# images/containers.conf (CONTAINERS_CONF), never the machine's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
what=${1:-all}
PYTHON=${PYTHON:-python3}
UV=${UV:-uv}
export CONTAINERS_CONF=$ROOT/images/containers.conf
BASE=localhost/longrun-base:bookworm
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
TAG=${IMAGE_TAG:-$VERSION}
CONTEXT=$ROOT/.tools/images/context
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf '==> %s\n' "$*"; }

ensure_tools() {
    local missing=()
    # catatonit: the pause process of the pods `podman kube play` makes (make rehearse).
    for tool in podman runc debootstrap catatonit; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "make images: ${missing[*]} missing; install Debian's podman, runc, debootstrap, catatonit (root)" >&2
        exit 1
    fi
    say "installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends podman runc debootstrap catatonit >/dev/null
}

base_image() {
    if podman image exists "$BASE"; then
        say "$BASE exists (podman rmi it to rebuild)"
        return 0
    fi
    local rootfs
    rootfs=$(mktemp -d /var/tmp/longrun-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' RETURN
    say "debootstrap bookworm (minbase + python3) into $rootfs"
    debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
        > "$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    # What no container needs: downloaded packages, package lists, documentation, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    say "built $BASE"
}

app_image() {
    say "wheels for the image (host: uv build, pip download of the locked deps)"
    mkdir -p "$CONTEXT"
    # The image interpreter's marker environment decides which conditional dependencies it needs.
    local env_json
    env_json=$(podman run --rm --network none "$BASE" python3 -c '
import json, os, platform, sys
v = sys.implementation.version
print(json.dumps({"implementation_name": sys.implementation.name,
    "implementation_version": f"{v.major}.{v.minor}.{v.micro}", "os_name": os.name,
    "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform}))')
    "$ROOT/.venv/bin/python" scripts/image_wheels.py --context "$CONTEXT" --env-json "$env_json" \
        --pip "$PYTHON -m pip" --uv "$UV"
    cp "$(command -v "$UV")" "$CONTEXT/uv"
    say "podman build localhost/longrun:$TAG (offline: --network none)"
    podman build --quiet --network none --file images/Containerfile --build-arg "VERSION=$TAG" \
        --tag "localhost/longrun:$TAG" --tag localhost/longrun:latest "$CONTEXT" >/dev/null
}

support_images() {
    say "podman build localhost/longrun-redis:7 and localhost/longrun-postgres:15 (apt inside: --network host)"
    podman build --quiet --network host --file images/redis.Containerfile --tag localhost/longrun-redis:7 \
        images >/dev/null
    podman build --quiet --network host --file images/postgres.Containerfile \
        --tag localhost/longrun-postgres:15 images >/dev/null
}

ensure_tools
base_image
case "$what" in
    all) app_image; support_images ;;
    app) app_image ;;
    support) support_images ;;
    *) echo "usage: $0 [all|app|support]" >&2; exit 2 ;;
esac
podman images --filter reference='localhost/longrun*' --format '{{.Repository}}:{{.Tag}}  {{.Size}}'
