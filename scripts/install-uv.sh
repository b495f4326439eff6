#!/usr/bin/env bash
# Install uv for a machine that has Python and pip but no uv: into a git-ignored venv (.tools/venv), or, where
# Python cannot make a venv (Debian without python3-venv), with `pip install --user` and a link into the same
# place, so the Makefile finds uv at .tools/venv/bin/uv either way (~/.local/bin need not be on PATH).
set -euo pipefail

python=${1:-python3}
venv=${2:-.tools/venv}

# Several `make` runs may get here at once on a fresh clone (`make gateway & make worker`): two installs into one
# venv break each other (`Permission denied`). So the script holds a lock next to the venv while it works, and
# whoever comes second finds uv installed.
if [ -z "${INSTALL_UV_LOCKED:-}" ]; then
    INSTALL_UV_LOCKED=1 exec "$python" "$(dirname "$0")/with_lock.py" "$venv.lock" -- "$0" "$python" "$venv"
fi
if [ -x "$venv/bin/uv" ] && "$venv/bin/uv" --version >/dev/null 2>&1; then
    exit 0
fi

if "$python" -m venv "$venv" >/dev/null 2>&1 && [ -x "$venv/bin/python" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv
else
    rm -rf "$venv"
    echo "install-uv: '$python -m venv' is unavailable; using 'pip install --user uv'" >&2
    "$python" -m pip install --quiet --disable-pip-version-check --user uv \
        || "$python" -m pip install --quiet --disable-pip-version-check --user --break-system-packages uv
    # The uv package knows where its binary went (~/.local/bin, or the interpreter's own scripts folder).
    uv_bin=$("$python" -c 'import uv; print(uv.find_uv_bin())')
    mkdir -p "$venv/bin"
    ln -sf "$uv_bin" "$venv/bin/uv"
fi

"$venv/bin/uv" --version
