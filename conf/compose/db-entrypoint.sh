#!/bin/sh
# The compose farm's db service: Debian's PostgreSQL 15, its cluster in the db-data volume.
# The first start makes the cluster, the role and the database pvsd (password
# $POSTGRES_PASSWORD); every start then runs the server in the foreground as postgres.
set -eu
data=/var/lib/postgresql/data
bin=/usr/lib/postgresql/15/bin
mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 700 "$data"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ ! -s "$data/PG_VERSION" ]; then
    echo '{"event": "db: creating the cluster", "level": "info", "logger": "compose"}'
    as_postgres "$bin/initdb" --pgdata="$data" --username=postgres --auth-local=peer \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    echo "host all all 0.0.0.0/0 scram-sha-256" >>"$data/pg_hba.conf"
    # Single-user mode: nothing listens until the role and the database exist.
    printf "CREATE ROLE pvsd LOGIN PASSWORD '%s';\n" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" |
        as_postgres "$bin/postgres" --single -D "$data" postgres >/dev/null
    echo "CREATE DATABASE pvsd OWNER pvsd;" | as_postgres "$bin/postgres" --single -D "$data" postgres >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$data" \
    -c listen_addresses='*' -c log_line_prefix='%m [%p] ' -c max_connections=200
