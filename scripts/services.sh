#!/usr/bin/env bash
# Redis and PostgreSQL from Debian: `install`, `start` (`make services`), `stop`, `status`, `env`.
#
# `install` (run by `make test`) installs the Debian packages `redis-server` and `postgresql` when
# their binaries are missing; the tests then start private servers of their own (tests/services.py).
# `start` installs, then runs both on 127.0.0.1 for the benchmarks, with throwaway data under
# $QWED_GUARD_SERVICES_DIR (default ${TMPDIR:-/tmp}/qwed-guard-services), and writes their URLs to
# "$dir/env", which benchmarks/services.py reads. Idempotent: a server that already answers is
# left alone. `stop` stops both and deletes the data.
set -euo pipefail

DIR="${QWED_GUARD_SERVICES_DIR:-${TMPDIR:-/tmp}/qwed-guard-services}"
REDIS_PORT="${QWED_GUARD_REDIS_PORT:-6379}"
PG_PORT="${QWED_GUARD_PG_PORT:-5432}"
# A throwaway local server: the password only keeps the tests honest about password auth.
PG_USER="qwed_guard"
PG_DB="qwed_guard"
# Not a word that appears elsewhere: the sink scrubs its password from every log line.
PG_PASSWORD="${QWED_GUARD_PG_PASSWORD:-pg-local-7c3e91}"
WAIT_SECONDS="${QWED_GUARD_SERVICES_WAIT:-30}"

REDIS_DIR="$DIR/redis"
PG_ROOT="$DIR/postgres"
PG_DATA="$PG_ROOT/data"
PG_SOCK="$PG_ROOT/run"
ENV_FILE="$DIR/env"

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "need root to run: $* (run this script as root or install the packages)"
    else
        die "need root to run: $* (run this script as root or install the packages)"
    fi
}

# PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` user.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n $bin && -x $bin/initdb ]] && echo "$bin"
}

install_missing() {
    local packages=()
    command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
    [[ -n $(pg_bin || true) ]] || packages+=(postgresql)
    [[ ${#packages[@]} -eq 0 ]] && return 0
    log "installing ${packages[*]}"
    # Keep the packages' own init scripts from starting system-wide servers on our ports.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"
        created_policy=1
    fi
    local status=0
    # Wait for another apt-get (a second checkout installing the same) instead of failing.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    as_root "${apt[@]}" update -qq || status=$?
    if [[ $status -eq 0 ]]; then
        as_root "${apt[@]}" install -y -qq \
            --no-install-recommends "${packages[@]}" >/dev/null || status=$?
    fi
    [[ $created_policy -eq 1 ]] && as_root rm -f "$policy"
    [[ $status -eq 0 ]] || die "apt-get failed for ${packages[*]}"
}

redis_ping() {
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

start_redis() {
    if redis_ping; then
        log "redis already answering on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    mkdir -p "$REDIS_DIR"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" \
        --logfile "$REDIS_DIR/redis.log"
    local waited=0
    until redis_ping; do
        ((waited < WAIT_SECONDS * 10)) || die "redis did not answer within ${WAIT_SECONDS}s (see $REDIS_DIR/redis.log)"
        sleep 0.1
        waited=$((waited + 1))
    done
    log "redis started on 127.0.0.1:$REDIS_PORT"
}

pg_ready() {
    "$1/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 1
}

start_postgres() {
    local bin
    bin=$(pg_bin) || die "no PostgreSQL binaries under /usr/lib/postgresql"
    local version
    version=$("$bin/postgres" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')
    if pg_ready "$bin" && ! as_pg "$bin/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
        log "postgresql already answering on 127.0.0.1:$PG_PORT (not ours: database and role left as they are)"
        return 0
    fi
    mkdir -p "$PG_ROOT"
    chmod 755 "$DIR" "$PG_ROOT"
    if [[ -f $PG_DATA/PG_VERSION && $(cat "$PG_DATA/PG_VERSION") != "$version" ]]; then
        log "discarding data directory of PostgreSQL $(cat "$PG_DATA/PG_VERSION")"
        rm -rf "$PG_DATA"
    fi
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        rm -rf "$PG_DATA"
        mkdir -p "$PG_DATA" "$PG_SOCK"
        [[ $EUID -eq 0 ]] && chown -R postgres:postgres "$PG_ROOT"
        as_pg test -w "$PG_DATA" || die "the postgres user cannot write $PG_DATA (set QWED_GUARD_SERVICES_DIR)"
        as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256 >"$PG_ROOT/initdb.log" 2>&1 ||
            die "initdb failed (see $PG_ROOT/initdb.log)"
    fi
    mkdir -p "$PG_SOCK"
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$PG_SOCK"
    if ! as_pg "$bin/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
        # fsync off: the data is thrown away anyway; a process crash still loses nothing committed.
        as_pg "$bin/pg_ctl" start -D "$PG_DATA" -l "$PG_ROOT/postgres.log" -w -t "$WAIT_SECONDS" \
            -o "-h 127.0.0.1 -p $PG_PORT -k $PG_SOCK -c fsync=off" >/dev/null ||
            die "postgresql did not start (see $PG_ROOT/postgres.log)"
    fi
    local waited=0
    until pg_ready "$bin"; do
        ((waited < WAIT_SECONDS * 10)) || die "postgresql did not answer within ${WAIT_SECONDS}s"
        sleep 0.1
        waited=$((waited + 1))
    done
    local psql=("$bin/psql" -X -q -h "$PG_SOCK" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1)
    as_pg "${psql[@]}" -d postgres -v user="$PG_USER" -v password="$PG_PASSWORD" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN SUPERUSER', :'user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'user', :'password') \gexec
SQL
    as_pg "${psql[@]}" -d postgres -v user="$PG_USER" -v db="$PG_DB" >/dev/null <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
    log "postgresql $version on 127.0.0.1:$PG_PORT, database $PG_DB, role $PG_USER"
}

write_env() {
    mkdir -p "$DIR"
    local tmp="$ENV_FILE.tmp"
    (
        umask 077
        {
            echo "QWED_GUARD_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
            echo "QWED_GUARD_POSTGRES_URL=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
        } >"$tmp"
    )
    mv "$tmp" "$ENV_FILE"
    log "URLs written to $ENV_FILE (load with: set -a; . $ENV_FILE; set +a)"
}

stop_all() {
    if [[ -f $REDIS_DIR/redis.pid ]]; then
        local pid
        pid=$(cat "$REDIS_DIR/redis.pid")
        if kill "$pid" 2>/dev/null; then
            local waited=0
            while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do
                sleep 0.1
                waited=$((waited + 1))
            done
            log "redis stopped"
        fi
    fi
    local bin
    bin=$(pg_bin || true)
    if [[ -n $bin && -f $PG_DATA/PG_VERSION ]] &&
        as_pg "$bin/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" stop -D "$PG_DATA" -m fast -w >/dev/null
        log "postgresql stopped"
    fi
    rm -rf "$DIR"
}

status() {
    local rc=0
    if command -v redis-cli >/dev/null 2>&1 && redis_ping; then
        echo "redis: up on 127.0.0.1:$REDIS_PORT"
    else
        echo "redis: down"
        rc=1
    fi
    local bin
    bin=$(pg_bin || true)
    if [[ -n $bin ]] && pg_ready "$bin"; then
        echo "postgresql: up on 127.0.0.1:$PG_PORT"
    else
        echo "postgresql: down"
        rc=1
    fi
    return $rc
}

case "${1:-start}" in
install) install_missing ;;
start)
    install_missing
    start_redis
    start_postgres
    write_env
    ;;
stop) stop_all ;;
status) status ;;
env) cat "$ENV_FILE" ;;
*)
    echo "usage: $0 [install|start|stop|status|env]" >&2
    exit 2
    ;;
esac
