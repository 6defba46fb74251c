#!/usr/bin/env bash
# Macro benchmark: pgbench straight at a TLS PostgreSQL vs. through lakebase-proxy.
#
# Everything runs on this machine over loopback: a throwaway PostgreSQL with a test CA, the
# proxy built from this tree, and pgbench. Runs alternate direct/proxy so slow drift of the
# machine (thermal, page cache, autovacuum) hits both sides alike.
#
#   bash benches/pgbench.sh                 # build, then ~80 s of runs
#   SKIP_BUILD=1 DURATION=5 bash benches/pgbench.sh
#
# Environment:
#   DURATION    seconds per pgbench run (default 10)
#   SCALE       pgbench scale factor (default 10, ~150 MB)
#   SKIP_BUILD  1 = use the existing target/release/lakebase-proxy
#   PROXY_BIN   proxy binary to measure (default target/release/lakebase-proxy)
#   LOG_DIR     if set, the proxy/postgres logs and raw pgbench output are copied there
#
# Exit status: 0 when every run succeeded, 1 when any failed (the table still prints).

set -euo pipefail

DURATION="${DURATION:-10}"
SCALE="${SCALE:-10}"
SKIP_BUILD="${SKIP_BUILD:-0}"
LOG_DIR="${LOG_DIR:-}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PROXY_BIN="${PROXY_BIN:-$TARGET_DIR/release/lakebase-proxy}"

# The caller's libpq settings (PGHOST, PGSSLMODE, PGPASSWORD, a ~/.pgpass...) would silently
# change what is measured, so none of them reach the clients below.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^PG' || true)
# (A nonexistent PGPASSFILE is ignored quietly; /dev/null would draw a warning per connection.)
export PGPASSFILE=/nonexistent/lakebase-bench-pgpass PGCONNECT_TIMEOUT=10

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- PostgreSQL binaries ------------------------------------------------------------------
# Debian's /usr/bin/pg_config may belong to a different major than the installed server, so
# the server binaries are searched for, newest first.
PG_BIN=""
for dir in "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/postgres" ]]; then PG_BIN="$dir"; break; fi
done
[[ -n "$PG_BIN" ]] || die "no PostgreSQL server binaries (initdb) found via pg_config or /usr/lib/postgresql/*/bin"
PGBENCH="$PG_BIN/pgbench"; [[ -x "$PGBENCH" ]] || PGBENCH="$(command -v pgbench)" || die "pgbench not found"
PSQL="$PG_BIN/psql"; [[ -x "$PSQL" ]] || PSQL="$(command -v psql)" || die "psql not found"
PG_ISREADY="$PG_BIN/pg_isready"; [[ -x "$PG_ISREADY" ]] || PG_ISREADY="$(command -v pg_isready)"
command -v openssl >/dev/null || die "openssl not found"

# PostgreSQL refuses to run as root; as root the server side runs as `postgres`.
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

# --- Cleanup: only what this script started, by PID --------------------------------------
TMP=""
PROXY_PID=""
PG_STARTED=0
cleanup() {
    local status=$?
    set +e
    if [[ -n "$PROXY_PID" ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill "$PROXY_PID" 2>/dev/null
        # Give it a moment to drain, then insist: a wedged proxy must not outlive the run.
        for _ in $(seq 50); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PROXY_PID" 2>/dev/null
        wait "$PROXY_PID" 2>/dev/null
    fi
    if [[ "$PG_STARTED" == 1 ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m fast -w stop >/dev/null 2>&1
    fi
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ -n "$LOG_DIR" ]]; then
            mkdir -p "$LOG_DIR" && cp -r "$TMP"/*.log "$TMP"/runs "$LOG_DIR"/ 2>/dev/null
        fi
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port nobody uses. It is drawn from below the kernel's ephemeral range: a port in that
# range can be the local end of some client connection (pgbench's own, say), which a connect
# probe does not see but which makes bind fail with "Address already in use".
free_port() {
    local low high port
    read -r low high < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { low=32768; high=60999; }
    for _ in $(seq 100); do
        if ((low > 11000)); then port=$((10000 + RANDOM % (low - 10000))); else port=$((high + 1 + RANDOM % (65535 - high))); fi
        if command -v ss >/dev/null; then
            # Any socket, listening or connected, on that local port rules it out.
            [[ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ]] && { echo "$port"; return 0; }
        elif ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"; return 0
        fi
    done
    return 1
}

# --- Build ----------------------------------------------------------------------------------
if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building the proxy (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin lakebase-proxy)
fi
[[ -x "$PROXY_BIN" ]] || die "$PROXY_BIN does not exist (build it or unset SKIP_BUILD)"

TMP="$(mktemp -d -t lakebase-pgbench.XXXXXX)"
mkdir -p "$TMP/runs" "$TMP/sock"

# --- Test PKI -----------------------------------------------------------------------------
# A real CA plus a leaf: rustls (the proxy) rejects a self-signed end-entity certificate, and
# libpq's verify-full needs the name in subjectAltName.
log "creating a test CA and a certificate for localhost/127.0.0.1"
(
    cd "$TMP"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
        -subj "/CN=lakebase-proxy bench CA" -keyout ca.key -out ca.crt \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    cat > server.ext <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EOF
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.crt 2>/dev/null
    chmod 600 server.key ca.key
)
CA="$TMP/ca.crt"

# --- Throwaway PostgreSQL ----------------------------------------------------------------
PG_PORT="$(free_port)" || die "no free port for PostgreSQL"
# The server user must own its data directory and key; root can still read everything.
if [[ "$(id -u)" == 0 ]]; then chown -R postgres: "$TMP"; fi

log "starting PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres -E UTF8 --locale=C --auth=trust >"$TMP/initdb.log" 2>&1 \
    || { tail -20 "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >> "$TMP/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
max_connections = 200
ssl = on
ssl_cert_file = '$TMP/server.crt'
ssl_key_file = '$TMP/server.key'
password_encryption = 'scram-sha-256'
# Durability is irrelevant for a throwaway cluster and would only measure the disk.
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
EOF
# TCP clients (direct pgbench and the proxy) must come over TLS with SCRAM, like Lakebase;
# only the setup below uses the unix socket.
cat > "$TMP/data/pg_hba.conf" <<'EOF'
local    all  all                 trust
hostssl  all  all  127.0.0.1/32   scram-sha-256
EOF
as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
    || { tail -20 "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }
PG_STARTED=1

PASSWORD="$(openssl rand -hex 24)"
SUPER=(-h "$TMP/sock" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
"$PSQL" "${SUPER[@]}" -d postgres -c "CREATE ROLE bench LOGIN PASSWORD '$PASSWORD'"
"$PSQL" "${SUPER[@]}" -d postgres -c "CREATE DATABASE bench OWNER bench"
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -s "$SCALE" -q -h "$TMP/sock" -p "$PG_PORT" -U bench bench >"$TMP/runs/init.log" 2>&1 \
    || { tail -20 "$TMP/runs/init.log" >&2; die "pgbench -i failed"; }

# The proxy reads the first line; keep it private like a real credential.
(umask 077; printf '%s\n' "$PASSWORD" > "$TMP/password")
if [[ "$(id -u)" == 0 ]]; then chown root: "$TMP/password"; fi

DIRECT="host=localhost hostaddr=127.0.0.1 port=$PG_PORT dbname=bench user=bench sslmode=verify-full sslrootcert=$CA"
# Sanity check the direct path first: if this fails, nothing below means anything.
PGPASSWORD="$PASSWORD" "$PSQL" "$DIRECT" -qAtc 'select 1' >/dev/null || die "direct TLS login as bench failed"

# --- The proxy ------------------------------------------------------------------------------
PROXY_PORT="$(free_port)" || die "no free port for the proxy"
while [[ "$PROXY_PORT" == "$PG_PORT" ]]; do PROXY_PORT="$(free_port)"; done
PROXIED="host=127.0.0.1 port=$PROXY_PORT dbname=bench user=bench"
PROXY_LOG="$TMP/proxy.log"
PROXY_OK=0

proxy_log_tail() {
    printf -- '--- last lines of the proxy log (%s) ---\n' "$PROXY_LOG" >&2
    tail -n "${1:-25}" "$PROXY_LOG" >&2 || true
    printf -- '---\n' >&2
}

log "starting lakebase-proxy on 127.0.0.1:$PROXY_PORT (pool 64, 8 warm)"
# NO_COLOR keeps the log tail printed on failure readable.
NO_COLOR=1 "$PROXY_BIN" "postgresql://bench@localhost:$PG_PORT/bench?sslrootcert=$CA" \
    --address 127.0.0.1 --port "$PROXY_PORT" --password-file "$TMP/password" \
    --max-pool-size 64 --min-idle 8 >"$PROXY_LOG" 2>&1 &
PROXY_PID=$!

# Wait for it to answer, but stop early if it died; never wait forever.
for _ in $(seq 150); do
    if ! kill -0 "$PROXY_PID" 2>/dev/null; then break; fi
    if "$PG_ISREADY" -q -h 127.0.0.1 -p "$PROXY_PORT" -U bench -d bench -t 2; then PROXY_OK=1; break; fi
    sleep 0.1
done
if [[ "$PROXY_OK" == 1 ]]; then
    # Accepting TCP is not enough: a real query proves login upstream and the relay work.
    if ! smoke="$(timeout 30 "$PSQL" "$PROXIED" -qAtc 'select 1' 2>"$TMP/smoke.err")" || [[ "$smoke" != 1 ]]; then
        smoke="$smoke$(cat "$TMP/smoke.err")"
        PROXY_OK=0
        printf 'error: `select 1` through the proxy failed: %s\n' "$smoke" >&2
        proxy_log_tail
    fi
elif ! kill -0 "$PROXY_PID" 2>/dev/null; then
    wait "$PROXY_PID" && code=0 || code=$?
    PROXY_PID=""
    printf 'error: the proxy exited (status %s) before accepting connections\n' "$code" >&2
    proxy_log_tail
else
    printf 'error: the proxy did not accept connections within 15 s\n' >&2
    proxy_log_tail
fi
[[ "$PROXY_OK" == 1 ]] || printf 'warning: proxied runs are skipped; only the direct half is measured\n' >&2

# --- Runs -----------------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
FAILED=0

# utime+stime of a process in clock ticks. Fields are counted after the ")" that closes the
# command name, which may itself contain spaces.
cpu_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    stat="${stat##*) }"
    awk '{print $12 + $13}' <<<"$stat"
}

# run NAME TARGET(direct|proxy) PGBENCH-ARGS...: runs pgbench and sets TPS, LAT (ms) and
# CPU (proxy CPU us per transaction, "-" for direct); TPS is "FAILED" or "skipped" otherwise.
# Not called in $(...): it must be able to update FAILED and PROXY_OK.
run() {
    local name="$1" side="$2"; shift 2
    local out="$TMP/runs/$name-$side.log" conn env_args=() before after tx
    TPS="-" LAT="-" CPU="-"
    if [[ "$side" == direct ]]; then
        conn="$DIRECT"; env_args=(PGPASSWORD="$PASSWORD")
    else
        conn="$PROXIED"
        if [[ "$PROXY_OK" != 1 ]]; then TPS="skipped"; return; fi
        before="$(cpu_ticks "$PROXY_PID")"
    fi
    # pgbench itself cannot hang past -T unless its server does; the margin covers -C setup.
    if ! env "${env_args[@]}" timeout --kill-after=5 $((DURATION + 60)) \
            "$PGBENCH" -n -T "$DURATION" "$@" "$conn" >"$out" 2>&1; then
        printf '\nerror: pgbench %s (%s) failed:\n' "$name" "$side" >&2
        tail -n 8 "$out" >&2
        if [[ "$side" == proxy ]]; then
            proxy_log_tail 15
            kill -0 "$PROXY_PID" 2>/dev/null || { PROXY_OK=0; printf 'error: the proxy has died\n' >&2; }
        fi
        FAILED=1
        TPS="FAILED"
        return
    fi
    tx="$(awk -F': ' '/number of transactions actually processed/ {split($2, a, "/"); print a[1]}' "$out")"
    TPS="$(awk '/^tps = / {printf "%.0f", $3; exit}' "$out")"
    LAT="$(awk '/^latency average = / {print $4; exit}' "$out")"
    if [[ "$side" == proxy ]]; then
        after="$(cpu_ticks "$PROXY_PID")"
        CPU="$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="${tx:-0}" \
            'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }')"
    fi
    TPS="${TPS:-?}" LAT="${LAT:-?}"
}

# name | pgbench args | table label
SCENARIOS=(
    "select-c1|-S -c 1 -j 1|select-only"
    "select-c8|-S -c 8 -j 2|select-only"
    "tpcb-c8|-c 8 -j 2|tpc-b"
    "select-C-c8|-S -C -c 8 -j 2|select-only -C"
)
ROWS=()
for scenario in "${SCENARIOS[@]}"; do
    IFS='|' read -r name args label <<<"$scenario"
    clients="$(sed -E 's/.*-c ([0-9]+).*/\1/' <<<"$args")"
    log "$label, $clients client(s), ${DURATION}s: direct"
    # shellcheck disable=SC2086 # args are word-split on purpose
    run "$name" direct $args; d_tps="$TPS" d_lat="$LAT"
    log "$label, $clients client(s), ${DURATION}s: proxy"
    # shellcheck disable=SC2086
    run "$name" proxy $args; p_tps="$TPS" p_lat="$LAT" p_cpu="$CPU"
    ratio="$(awk -v p="$p_tps" -v d="$d_tps" 'BEGIN { if (p+0 > 0 && d+0 > 0) printf "%.2f", p / d; else print "-" }')"
    ROWS+=("$label|$clients|$d_tps|$d_lat|$p_tps|$p_lat|$ratio|$p_cpu")
done

# --- Report ---------------------------------------------------------------------------------
printf '\npgbench %s, scale %s, %ss per run, PostgreSQL over TLS (scram-sha-256) on loopback\n' \
    "$("$PGBENCH" --version | awk '{print $3}')" "$SCALE" "$DURATION"
printf 'proxy: %s --max-pool-size 64 --min-idle 8; CPU = proxy utime+stime per transaction\n\n' "$PROXY_BIN"
fmt='%-15s %7s %12s %10s %12s %10s %8s %13s\n'
printf "$fmt" mode clients "direct TPS" "lat ms" "proxy TPS" "lat ms" "ratio" "proxy CPU us"
printf "$fmt" --------------- ------- ------------ ---------- ------------ ---------- -------- -------------
for row in "${ROWS[@]}"; do
    IFS='|' read -r -a f <<<"$row"
    printf "$fmt" "${f[@]}"
done
echo

if [[ "$PROXY_OK" != 1 || "$FAILED" == 1 ]]; then
    echo "Some runs failed or were skipped; see the errors above." >&2
    exit 1
fi
