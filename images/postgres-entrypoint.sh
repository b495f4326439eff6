#!/bin/sh
# First start: initdb with POSTGRES_USER as the superuser (password auth over TCP when POSTGRES_PASSWORD is
# set, trust otherwise) and create POSTGRES_DB. UTF8 spelled out: a minimal image has no locale, and initdb
# would pick SQL_ASCII, for which psycopg returns bytes. Then PostgreSQL replaces this script (exec): PID 1.
set -eu
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    auth=trust
    pwfile=$(mktemp)
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        auth=scram-sha-256
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
        initdb -D "$PGDATA" -U "$user" --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host="$auth" --pwfile="$pwfile" >/dev/null
    else
        initdb -D "$PGDATA" -U "$user" --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=trust >/dev/null
    fi
    rm -f "$pwfile"
    printf 'host all all 0.0.0.0/0 %s\nhost all all ::/0 %s\n' "$auth" "$auth" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp -c fsync=off "$@"
