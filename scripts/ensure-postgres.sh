#!/usr/bin/env bash
# The tests need PostgreSQL: LONGRUN_TEST_DATABASE_URL, or a server on 127.0.0.1:5432, or the server binaries
# (initdb, postgres) to start a private one. Install Debian's postgresql only when none of these is there.
set -euo pipefail

if [ -n "${LONGRUN_TEST_DATABASE_URL:-}" ]; then exit 0; fi
if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then exit 0; fi
if command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then exit 0; fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "ensure-postgres: no PostgreSQL answers on 127.0.0.1:5432 and initdb is not installed;" \
         "install PostgreSQL or set LONGRUN_TEST_DATABASE_URL" >&2
    exit 1
fi
echo "Installing postgresql (Debian package) for the tests' private server"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
