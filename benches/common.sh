# Shared by benches/pgbench.sh and benches/soak.sh (sourced, not run): messages, the caller's
# libpq settings kept out, PostgreSQL binaries, running as `postgres`, stopping by PID, ports.

log() { printf '\n== %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The caller's libpq settings (PGHOST, PGSSLMODE, PGPASSWORD, a ~/.pgpass...) would silently
# change what is measured, so none of them reach the clients; the names given are kept (a
# script's own switches that happen to start with PG).
scrub_pg_env() {
    local name keep
    while read -r name; do
        for keep in "$@"; do [[ "$name" == "$keep" ]] && continue 2; done
        unset "$name"
    done < <(compgen -e | grep '^PG' || true)
    # A nonexistent PGPASSFILE is ignored quietly; /dev/null would draw a warning per connection.
    export PGPASSFILE=/nonexistent/lakebase-bench-pgpass PGCONNECT_TIMEOUT=10
}

# PG_BIN and the client tools. Debian's /usr/bin/pg_config may belong to a different major
# than the installed server, so the server binaries are searched for, newest first.
find_postgres() {
    local dir
    PG_BIN=""
    for dir in "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/postgres" ]]; then PG_BIN="$dir"; break; fi
    done
    [[ -n "$PG_BIN" ]] || die "no PostgreSQL server binaries (initdb) found via pg_config or /usr/lib/postgresql/*/bin"
    PGBENCH="$PG_BIN/pgbench"; [[ -x "$PGBENCH" ]] || PGBENCH="$(command -v pgbench)" || die "pgbench not found"
    PSQL="$PG_BIN/psql"; [[ -x "$PSQL" ]] || PSQL="$(command -v psql)" || die "psql not found"
    PG_ISREADY="$PG_BIN/pg_isready"; [[ -x "$PG_ISREADY" ]] || PG_ISREADY="$(command -v pg_isready)"
}

# PostgreSQL (and PgBouncer) refuse to run as root; as root the server side runs as
# `postgres`. `as_pg CMD...` runs a command so; `"${AS_PG_EXEC[@]}" CMD &` starts a daemon so
# as a simple command: setpriv (unlike runuser) execs in place, so `$!` is the daemon's PID.
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server"
    as_pg() { runuser -u postgres -- "$@"; }
    AS_PG_EXEC=(setpriv --reuid=postgres --regid=postgres --init-groups --)
else
    as_pg() { "$@"; }
    AS_PG_EXEC=(env)
fi

# stop_pid PID: SIGTERM, a moment to drain, then SIGKILL; a wedged process must not outlive
# the script.
stop_pid() {
    local pid="$1"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# A port nobody uses. It is drawn from below the kernel's ephemeral range: a port in that
# range can be the local end of some client connection (pgbench's own, say), which a connect
# probe does not see but which makes bind fail with "Address already in use". (Callers bind
# each port before asking for the next.)
free_port() {
    local low high port
    read -r low high < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { low=32768; high=60999; }
    for _ in $(seq 100); do
        if ((low > 11000)); then port=$((10000 + RANDOM % (low - 10000))); else port=$((high + 1 + RANDOM % (65535 - high))); fi
        if command -v ss >/dev/null; then
            # Any socket, listening or connected, on that local port rules it out.
            [[ -n "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ]] && continue
        elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        echo "$port"
        return 0
    done
    return 1
}
