#!/usr/bin/env bash
# Macro benchmark: pgbench straight at a TLS PostgreSQL, through PgBouncer (session and
# transaction mode) and through lakebase-proxy, in one interleaved run; then the memory each
# pooler spends per idle client.
#
# Everything runs on this machine over loopback: a throwaway PostgreSQL 15+ with a test CA
# (TLS + SCRAM-SHA-256), PgBouncer (PGBOUNCER_BIN, else /opt/pgbouncer-1.25/bin/pgbouncer,
# else Debian's, installed when missing and running as root), the proxy built from this tree,
# and pgbench. Within every scenario the targets run back to back (e.g. direct, PgBouncer
# session, PgBouncer transaction, proxy), so slow drift of the machine (thermal, page cache,
# autovacuum) hits all of them alike.
#
#   bash benches/pgbench.sh                         # build, then ~5 min of runs + idle test
#   SKIP_BUILD=1 DURATION=5 bash benches/pgbench.sh
#   PGBOUNCER=0 IDLE=0 bash benches/pgbench.sh      # the original direct-vs-proxy comparison
#   SKIP_BUILD=1 MODE=transaction bash benches/pgbench.sh   # transaction pooling vs PgBouncer
#   SKIP_BUILD=1 MODE=all bash benches/pgbench.sh           # both parts in one run
#
# Two parts, chosen with MODE:
#
# - session (the default): direct TLS, PgBouncer in session and in transaction mode and the
#   proxy in session mode, all with POOL_SIZE server connections (MIN_IDLE warm).
# - transaction: PgBouncer and `lakebase-proxy --pool-mode transaction` side by side, each
#   with `max_prepared_statements = 200` / `--max-prepared-statements 200` and every server
#   connection warm: 64 clients on 8 server connections (targets pgb-tx8, proxy-tx8), select-only
#   with -M simple, extended and prepared, and TPC-B -M prepared with 32 clients; then 1,000
#   select-only clients on 20 server connections (pgb-tx20, proxy-tx20). PgBouncer needs 1.21+
#   for max_prepared_statements (older: its -M prepared runs are n/a). PgBouncer is known to
#   hang in TPC-B -M prepared when every server connection is held by a client whose pgbench
#   thread is itself blocked preparing a statement: that run is given DURATION + HANG_TIMEOUT
#   seconds, then stopped; a snapshot of the server connections (pg_stat_activity) and of the
#   pooler's SHOW POOLS is printed, the row shows HUNG, and the script goes on. Only that one
#   is expected: any other hung or failed run, and any run of the proxy, fails the script.
#
# PgBouncer is set up as the proxy is: `auth_type = trust` for its clients (it listens on
# 127.0.0.1 only), the bench role's password in its auth_file (plain text, so it logs in
# upstream with SCRAM-SHA-256 as the proxy does), upstream TLS with `server_tls_sslmode =
# verify-full` against the test CA and host `localhost`, the same pool size and warm
# connections (`default_pool_size`, `min_pool_size`), `max_client_conn = 20000`; `stats_users =
# bench` only lets the script read SHOW POOLS after a hang.
#
# Per run the table gives TPS, mean and p99 latency (from pgbench's per-transaction log, `-l`;
# connection time is not included, see "conn ms" for that), and for PgBouncer and the proxy the
# CPU time of the pooler's process (utime+stime from /proc/PID/stat) per transaction. Clients
# reach the poolers over loopback TCP, except in the "unix" scenarios, which use each pooler's
# unix socket (as a sidecar sharing a socket directory with its application would). The
# transaction table also gives pgbench's failed transactions and the proxy's TPS and CPU per
# transaction relative to PgBouncer's.
#
# The idle test starts fresh poolers and opens IDLE_COUNTS clients on each with
# benches/idle_clients.py (logins completed, then idle), reporting VmRSS growth per client:
# session part `lakebase-proxy --lazy-attach` and PgBouncer in session mode, transaction part
# `lakebase-proxy --pool-mode transaction` and PgBouncer in transaction mode (8 server
# connections each, none warm).
#
# Environment:
#   MODE         session (default), transaction, or all (both parts, session first)
#   DURATION     seconds per pgbench run (default 10)
#   SCALE        pgbench scale factor (default 10, ~150 MB)
#   POOL_SIZE    session part: upstream pool size for the proxy and PgBouncer (default 64)
#   MIN_IDLE     session part: warm upstream connections for both (default 8)
#   PGBOUNCER    0 = leave PgBouncer out (default 1)
#   PGBOUNCER_BIN  PgBouncer binary (default /opt/pgbouncer-1.25/bin/pgbouncer if present,
#                else `pgbouncer` on PATH or /usr/sbin/pgbouncer)
#   HANG_TIMEOUT seconds a run may take beyond DURATION before it counts as hung (default 60)
#   IDLE         0 = skip the idle-client test (default 1)
#   IDLE_COUNTS  cumulative idle client counts (default "1000 10000")
#   ONLY         run only these scenarios of the chosen MODE, e.g. ONLY="select-c8 select-C-c8"
#                or ONLY="tx-select-prepared-c64 tx-tpcb-prepared-c32" (names below)
#   WAIT_QUIET   before each run, wait up to this many seconds for the machine to be idle
#                (default 0: don't wait); the "others%" column shows what interfered anyway
#   SKIP_BUILD   1 = use the existing target/release/lakebase-proxy
#   PROXY_BIN    proxy binary to measure (default $CARGO_TARGET_DIR/release/lakebase-proxy,
#                target/release/lakebase-proxy without CARGO_TARGET_DIR)
#   LOG_DIR      if set, the logs (proxy, PgBouncer, postgres, raw pgbench output) are copied there
#
# Exit status: 0 when every run succeeded, 1 when any failed or hung (the table still prints;
# PgBouncer's known TPC-B -M prepared hang excepted). Missing a performance target (printed at
# the end) does not fail the script.

set -euo pipefail

MODE="${MODE:-session}"
DURATION="${DURATION:-10}"
SCALE="${SCALE:-10}"
POOL_SIZE="${POOL_SIZE:-64}"
MIN_IDLE="${MIN_IDLE:-8}"
PGBOUNCER="${PGBOUNCER:-1}"
PGBOUNCER_BIN="${PGBOUNCER_BIN:-}"
HANG_TIMEOUT="${HANG_TIMEOUT:-60}"
IDLE="${IDLE:-1}"
IDLE_COUNTS="${IDLE_COUNTS:-1000 10000}"
ONLY="${ONLY:-}"
WAIT_QUIET="${WAIT_QUIET:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
LOG_DIR="${LOG_DIR:-}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PROXY_BIN="${PROXY_BIN:-$TARGET_DIR/release/lakebase-proxy}"
IDLE_HELPER="$ROOT/benches/idle_clients.py"

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
# PGBOUNCER and PGBOUNCER_BIN are this script's own settings, not libpq's.
scrub_pg_env PGBOUNCER PGBOUNCER_BIN
case "$MODE" in
    session | transaction | all) ;;
    *) die "MODE=\"$MODE\": expected session, transaction or all" ;;
esac
[[ "$HANG_TIMEOUT" =~ ^[0-9]+$ ]] || die "HANG_TIMEOUT=\"$HANG_TIMEOUT\": expected seconds"
find_postgres
command -v openssl >/dev/null || die "openssl not found"

# Thousands of idle clients need as many descriptors in the client, the proxy and PgBouncer.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"

# --- Cleanup: only what this script started, by PID --------------------------------------
TMP=""
PG_STARTED=0
declare -A PID=()   # target -> PID of its pooler process (proxy, pgb-session, ...)
declare -A OK=()    # target -> 1 while it is up and usable
HELPER_PID=""
BENCH_PID=""

cleanup() {
    local status=$?
    set +e
    stop_pid "$HELPER_PID"
    stop_pid "$BENCH_PID"
    for target in "${!PID[@]}"; do stop_pid "${PID[$target]}"; done
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

# --- Build ----------------------------------------------------------------------------------
if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building the proxy (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin lakebase-proxy)
fi
[[ -x "$PROXY_BIN" ]] || die "$PROXY_BIN does not exist (build it or unset SKIP_BUILD)"

TMP="$(mktemp -d -t lakebase-pgbench.XXXXXX)"
mkdir -p "$TMP/runs" "$TMP/sock"
# A FIFO nobody writes to: `read -t` on it is a sleep without a process (see run).
TICK="$TMP/tick"
mkfifo "$TICK"

# --- PgBouncer --------------------------------------------------------------------------------
PGB_BIN=""
PGB_VERSION=""
PGB_PREPARED=0   # max_prepared_statements (transaction mode + -M prepared) needs >= 1.21
if [[ "$PGBOUNCER" == 1 ]]; then
    # 1.21+ (max_prepared_statements) is what the transaction part compares with; the build
    # script in the third-party folder installs 1.25 there.
    if [[ -n "$PGBOUNCER_BIN" ]]; then
        [[ -x "$PGBOUNCER_BIN" ]] || die "PGBOUNCER_BIN=$PGBOUNCER_BIN is not an executable"
        PGB_BIN="$PGBOUNCER_BIN"
    elif [[ -x /opt/pgbouncer-1.25/bin/pgbouncer ]]; then
        PGB_BIN=/opt/pgbouncer-1.25/bin/pgbouncer
    else
        PGB_BIN="$(command -v pgbouncer || true)"
    fi
    [[ -z "$PGB_BIN" && -x /usr/sbin/pgbouncer ]] && PGB_BIN=/usr/sbin/pgbouncer
    if [[ -z "$PGB_BIN" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing PgBouncer (apt-get install -y pgbouncer)"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >"$TMP/apt.log" 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get update >>"$TMP/apt.log" 2>&1 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >>"$TMP/apt.log" 2>&1 || tail -5 "$TMP/apt.log" >&2
        fi
        PGB_BIN="$(command -v pgbouncer || true)"
        [[ -z "$PGB_BIN" && -x /usr/sbin/pgbouncer ]] && PGB_BIN=/usr/sbin/pgbouncer
    fi
    if [[ -n "$PGB_BIN" ]]; then
        PGB_VERSION="$("$PGB_BIN" --version | awk 'NR == 1 {print $2}')"
        if [[ "$(printf '%s\n' 1.21.0 "$PGB_VERSION" | sort -V | head -1)" == 1.21.0 ]]; then PGB_PREPARED=1; fi
    else
        warn "PgBouncer is not installed (apt-get install pgbouncer); its runs are skipped"
        PGBOUNCER=0
    fi
    if [[ "$PGBOUNCER" == 1 && "$PGB_PREPARED" != 1 && "$MODE" != session ]]; then
        warn "PgBouncer $PGB_VERSION ($PGB_BIN) has no max_prepared_statements (1.21+): its -M prepared transaction-mode runs are n/a; set PGBOUNCER_BIN"
    fi
fi

# --- Scenarios ------------------------------------------------------------------------------
# name | pgbench args | table label | transport ("unix": clients come over the pooler's unix
# socket; empty: loopback TCP) | group (the targets it runs against, in this order; empty:
# session) | flags ("pgb-may-hang": a PgBouncer hang is recorded, not a failure)
declare -A GROUP_TARGETS=(
    [session]="direct pgb-session pgb-tx proxy"
    [tx8]="pgb-tx8 proxy-tx8"
    [tx20]="pgb-tx20 proxy-tx20"
)
SCENARIOS=()
if [[ "$MODE" != transaction ]]; then
    SCENARIOS+=(
        "select-c1|-S -c 1 -j 1|select-only"
        "select-c8|-S -c 8 -j 2|select-only"
        "select-c64|-S -c 64 -j 2|select-only"
        "tpcb-c8|-c 8 -j 2|tpc-b"
        "select-C-c8|-S -C -c 8 -j 2|select-only -C"
        "prepared-c8|-S -M prepared -c 8 -j 2|select -M prepared"
        # A sidecar or a laptop can hand clients a unix socket instead of loopback TCP; there is
        # no direct TLS equivalent (PostgreSQL's own socket has no TLS), so direct is n/a.
        "select-unix-c8|-S -c 8 -j 2|select-only unix|unix"
        "select-C-unix-c8|-S -C -c 8 -j 2|select -C unix|unix"
    )
fi
if [[ "$MODE" != session ]]; then
    SCENARIOS+=(
        # 64 clients on 8 server connections, in each query mode.
        "tx-select-simple-c64|-S -M simple -c 64 -j 2|select -M simple||tx8"
        "tx-select-extended-c64|-S -M extended -c 64 -j 2|select -M extended||tx8"
        "tx-select-prepared-c64|-S -M prepared -c 64 -j 2|select -M prepared||tx8"
        # pgbench 15 prepares each statement with a blocking PQprepare the first time its
        # client reaches it, so one thread's clients holding every server connection inside
        # BEGIN ... END wait for that thread while it waits for a server connection.
        "tx-tpcb-prepared-c32|-M prepared -c 32 -j 2|tpc-b -M prepared||tx8|pgb-may-hang"
        # Many clients on few server connections (pgbench polls with ppoll, so no FD_SETSIZE
        # limit; `ulimit -n` above was raised for it).
        "tx-select-c1000|-S -c 1000 -j 2|select-only||tx20"
    )
fi
if [[ -n "$ONLY" ]]; then
    kept=()
    for scenario in "${SCENARIOS[@]}"; do [[ " $ONLY " == *" ${scenario%%|*} "* ]] && kept+=("$scenario"); done
    ((${#kept[@]} > 0)) || die "ONLY=\"$ONLY\" names no scenario of MODE=$MODE"
    SCENARIOS=("${kept[@]}")
fi
# scenario_targets GROUP: sets SC_TARGETS to the group's targets (PgBouncer's only with PGBOUNCER=1).
scenario_targets() {
    local target all
    read -ra all <<<"${GROUP_TARGETS[${1:-session}]}"
    SC_TARGETS=()
    for target in "${all[@]}"; do
        [[ "$PGBOUNCER" != 1 && "$target" == pgb-* ]] || SC_TARGETS+=("$target")
    done
}
# The targets the chosen scenarios need, in the order they first appear.
NEEDED=()
for scenario in "${SCENARIOS[@]}"; do
    IFS='|' read -r _ _ _ _ group _ <<<"$scenario"
    scenario_targets "$group"
    for target in "${SC_TARGETS[@]}"; do
        [[ " ${NEEDED[*]} " == *" $target "* ]] || NEEDED+=("$target")
    done
done

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

# max_connections: the session part's proxy and both PgBouncers' pools (up to POOL_SIZE each)
# stay open between runs while the 64-client direct run opens its own 64 backends; the
# transaction part's four poolers hold 8 or 20 each.
MAX_CONNECTIONS=$((4 * POOL_SIZE + 2 * (8 + 20) + 50))
((MAX_CONNECTIONS >= 200)) || MAX_CONNECTIONS=200
log "starting PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres -E UTF8 --locale=C --auth=trust >"$TMP/initdb.log" 2>&1 \
    || { tail -20 "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >> "$TMP/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
max_connections = $MAX_CONNECTIONS
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
# TCP clients (direct pgbench, PgBouncer and the proxy) must come over TLS with SCRAM, like
# Lakebase; only the setup below uses the unix socket.
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
# PgBouncer's auth_file, with the plain password so that it can answer SCRAM upstream for a
# client it trusted (a SCRAM secret only works when the client itself logged in with SCRAM).
(umask 077; printf '"bench" "%s"\n' "$PASSWORD" > "$TMP/userlist.txt")
if [[ "$(id -u)" == 0 ]]; then chown postgres: "$TMP/userlist.txt"; fi

declare -A CONN=() CONN_UNIX=() LOGF=() LABEL=() SETTINGS=()
CONN[direct]="host=localhost hostaddr=127.0.0.1 port=$PG_PORT dbname=bench user=bench sslmode=verify-full sslrootcert=$CA"
LABEL[direct]="direct TLS"
# Sanity check the direct path first: if this fails, nothing below means anything.
PGPASSWORD="$PASSWORD" "$PSQL" "${CONN[direct]}" -qAtc 'select 1' >/dev/null || die "direct TLS login as bench failed"
OK[direct]=1

# --- Poolers ----------------------------------------------------------------------------------
log_tail() {
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n "${2:-25}" "$1" >&2 || true
    printf -- '---\n' >&2
}

# wait_ready TARGET PORT: waits for the pooler to answer and a query to pass; sets OK[TARGET].
wait_ready() {
    local target="$1" port="$2" pid="${PID[$1]}" smoke code
    OK[$target]=0
    for _ in $(seq 150); do
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        if "$PG_ISREADY" -q -h 127.0.0.1 -p "$port" -U bench -d bench -t 2; then OK[$target]=1; break; fi
        sleep 0.1
    done
    if [[ "${OK[$target]}" == 1 ]]; then
        # Accepting TCP is not enough: a real query proves login upstream and the relay work.
        if ! smoke="$(timeout 30 "$PSQL" "${CONN[$target]}" -qAtc 'select 1' 2>"$TMP/smoke.err")" || [[ "$smoke" != 1 ]]; then
            # shellcheck disable=SC2016 # the backquotes are literal
            printf 'error: `select 1` through %s failed: %s\n' "$target" "$smoke$(cat "$TMP/smoke.err")" >&2
            OK[$target]=0
            log_tail "${LOGF[$target]}"
        fi
    elif ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" && code=0 || code=$?
        unset "PID[$target]"
        printf 'error: %s exited (status %s) before accepting connections\n' "$target" "$code" >&2
        log_tail "${LOGF[$target]}"
    else
        printf 'error: %s did not accept connections within 15 s\n' "$target" >&2
        log_tail "${LOGF[$target]}"
    fi
    [[ "${OK[$target]}" == 1 ]] || warn "runs through $target are skipped"
}

# start_proxy TARGET PROXY-ARGS...
start_proxy() {
    local target="$1" port; shift
    port="$(free_port)" || die "no free port for the proxy"
    CONN[$target]="host=127.0.0.1 port=$port dbname=bench user=bench"
    LOGF[$target]="$TMP/$target.log"
    SETTINGS[$target]="$*"
    log "starting lakebase-proxy ($target) on 127.0.0.1:$port: $*"
    # NO_COLOR keeps the log tail printed on failure readable.
    NO_COLOR=1 "$PROXY_BIN" "postgresql://bench@localhost:$PG_PORT/bench?sslrootcert=$CA" \
        --address 127.0.0.1 --port "$port" --password-file "$TMP/password" "$@" >"${LOGF[$target]}" 2>&1 &
    PID[$target]=$!
    wait_ready "$target" "$port"
}

# start_pgbouncer TARGET MODE POOL MIN_POOL [EXTRA-INI-LINE...]
start_pgbouncer() {
    local target="$1" mode="$2" pool="$3" min_pool="$4" port dir; shift 4
    port="$(free_port)" || die "no free port for PgBouncer"
    dir="$TMP/$target"
    mkdir -p "$dir"
    cat > "$dir/pgbouncer.ini" <<EOF
[databases]
bench = host=localhost port=$PG_PORT dbname=bench user=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = $mode
default_pool_size = $pool
min_pool_size = $min_pool
reserve_pool_size = 0
max_client_conn = 20000
server_tls_sslmode = verify-full
server_tls_ca_file = $CA
stats_users = bench
$(printf '%s\n' "$@")
EOF
    if [[ "$(id -u)" == 0 ]]; then chown -R postgres: "$dir"; fi
    CONN[$target]="host=127.0.0.1 port=$port dbname=bench user=bench"
    CONN_UNIX[$target]="host=$dir port=$port dbname=bench user=bench"
    LOGF[$target]="$TMP/$target.log"
    SETTINGS[$target]="pool_mode=$mode default_pool_size=$pool min_pool_size=$min_pool${*:+ $*}"
    log "starting PgBouncer $PGB_VERSION ($target, ${SETTINGS[$target]}) on 127.0.0.1:$port"
    "${AS_PG_EXEC[@]}" "$PGB_BIN" "$dir/pgbouncer.ini" >"${LOGF[$target]}" 2>&1 &
    PID[$target]=$!
    # Make sure the PID is PgBouncer's (see AS_PG_EXEC): it is what gets measured and stopped.
    sleep 0.2
    if kill -0 "${PID[$target]}" 2>/dev/null && [[ "$(cat "/proc/${PID[$target]}/comm" 2>/dev/null)" != pgbouncer ]]; then
        die "PID ${PID[$target]} is $(cat "/proc/${PID[$target]}/comm" 2>/dev/null), not pgbouncer"
    fi
    wait_ready "$target" "$port"
}

LABEL[pgb-session]="PgBouncer session"
LABEL[pgb-tx]="PgBouncer transaction"
LABEL[proxy]="lakebase-proxy"
LABEL[pgb-tx8]="PgBouncer tx, 8 srv"
LABEL[proxy-tx8]="lakebase-proxy tx, 8"
LABEL[pgb-tx20]="PgBouncer tx, 20 srv"
LABEL[proxy-tx20]="lakebase-proxy tx, 20"
PGB_TX_INI=()
[[ "$PGB_PREPARED" == 1 ]] && PGB_TX_INI=("max_prepared_statements = 200")

# start_target TARGET: starts the pooler behind TARGET (direct needs none).
start_target() {
    local target="$1" n
    case "$target" in
        direct) ;;
        pgb-session) start_pgbouncer pgb-session session "$POOL_SIZE" "$MIN_IDLE" ;;
        pgb-tx) start_pgbouncer pgb-tx transaction "$POOL_SIZE" "$MIN_IDLE" "${PGB_TX_INI[@]}" ;;
        proxy)
            mkdir -p "$TMP/proxy-sock"
            start_proxy proxy --max-pool-size "$POOL_SIZE" --min-idle "$MIN_IDLE" --unix-socket "$TMP/proxy-sock"
            CONN_UNIX[proxy]="host=$TMP/proxy-sock port=$(sed -E 's/.*port=([0-9]+).*/\1/' <<<"${CONN[proxy]}") dbname=bench user=bench"
            ;;
        # Transaction part: every server connection warm from the start, on both.
        pgb-tx*)
            n="${target#pgb-tx}"
            start_pgbouncer "$target" transaction "$n" "$n" "${PGB_TX_INI[@]}"
            ;;
        proxy-tx*)
            n="${target#proxy-tx}"
            start_proxy "$target" --pool-mode transaction --max-pool-size "$n" --min-idle "$n" \
                --max-prepared-statements 200 --max-client-connections 20000
            ;;
        *) die "unknown target $target" ;;
    esac
}
for target in "${NEEDED[@]}"; do start_target "$target"; done

# --- Runs -----------------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
FAILED=0
TRANSPORT=tcp

# utime+stime of a process (all its threads) in clock ticks. Fields are counted after the ")"
# that closes the command name, which may itself contain spaces.
cpu_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    stat="${stat##*) }"
    awk '{print $12 + $13}' <<<"$stat"
}

# The machine is shared, so every run also reports how much CPU went to processes that are
# not part of the benchmark ("others %" of all CPUs over the run): busy time of the whole
# machine (/proc/stat) minus PostgreSQL (postmaster, its live children, and the children it
# reaped), pgbench (this shell's reaped children) and the pooler.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
NCPU="$(nproc)"
pg_tree_ticks() {
    local postmaster total=0 child
    postmaster="$(head -1 "$TMP/data/postmaster.pid" 2>/dev/null)" || { echo 0; return; }
    total="$(awk '{sub(/^.*\) /, ""); print $12 + $13 + $14 + $15}' "/proc/$postmaster/stat" 2>/dev/null || echo 0)"
    for child in $(ps -o pid= --ppid "$postmaster" 2>/dev/null); do
        total=$((total + $(cpu_ticks "$child")))
    done
    echo "$total"
}
# CPU ticks of this shell's reaped children (pgbench, via the subshell and timeout that ran it).
reaped_ticks() { awk '{sub(/^.*\) /, ""); print $14 + $15}' "/proc/$$/stat"; }
sample() { echo "$(busy_ticks) $(pg_tree_ticks) $(reaped_ticks) $(date +%s%N)"; }

# With WAIT_QUIET=N, each run first waits up to N seconds for a 2-second window in which the
# machine is at most 15% busy (builds and tests of others on a shared machine).
wait_quiet() {
    ((WAIT_QUIET > 0)) || return 0
    local deadline=$((SECONDS + WAIT_QUIET)) a b pct=0
    while ((SECONDS < deadline)); do
        a="$(busy_ticks)"; sleep 2; b="$(busy_ticks)"
        pct=$(((b - a) * 100 / (2 * CLK_TCK * NCPU)))
        if ((pct <= 15)); then return 0; fi
    done
    warn "the machine stayed busy ($pct% of its CPUs) for ${WAIT_QUIET}s; running anyway"
}

# hang_snapshot TARGET: what the server connections and the pooler are doing, for a run that
# did not finish.
hang_snapshot() {
    local target="$1" port admin_db=lakebase_proxy
    printf 'PostgreSQL backends of role bench (pg_stat_activity):\n'
    timeout 10 "$PSQL" -X -P pager=off -h "$TMP/sock" -p "$PG_PORT" -U postgres -d postgres -c \
        "select state, wait_event_type || ':' || wait_event as waiting_for,
                left(regexp_replace(query, '\s+', ' ', 'g'), 60) as last_query, count(*)
           from pg_stat_activity where usename = 'bench' group by 1, 2, 3 order by 4 desc" 2>&1
    [[ "$target" == direct ]] && return 0
    [[ "$target" == pgb-* ]] && admin_db=pgbouncer
    port="$(sed -E 's/.*port=([0-9]+).*/\1/' <<<"${CONN[$target]}")"
    printf '%s (PID %s), SHOW POOLS:\n' "${LABEL[$target]}" "${PID[$target]:-?}"
    timeout 10 "$PSQL" -X -P pager=off "host=127.0.0.1 port=$port dbname=$admin_db user=bench" -c 'SHOW POOLS' 2>&1
}

# run NAME TARGET PGBENCH-ARGS...: runs pgbench with a per-transaction log (over TCP, or over
# the pooler's unix socket when TRANSPORT is "unix") and sets TPS, LAT/P99 (ms, from the log),
# CONN_MS (pgbench's initial or, with -C, average connection time), CPU (the pooler's CPU us
# per transaction, "-" for direct) and FAILS (pgbench's failed transactions); TPS is "FAILED"
# (pgbench failed: an error, an aborted client), "HUNG" (still running DURATION +
# HANG_TIMEOUT seconds in: stopped, HANG_FILE then holds hang_snapshot's output) or "skipped"
# otherwise. Not called in $(...): it must be able to update FAILED and OK.
run() {
    local name="$1" target="$2"; shift 2
    local prefix="$TMP/runs/$name-$target" env_args=() pid="" before=0 after=0 tx stats s0 s1 deadline status=0
    TPS="-" LAT="-" P99="-" CONN_MS="-" CPU="-" OTHERS="-" FAILS="-" HANG_FILE=""
    if [[ "${OK[$target]:-0}" != 1 ]]; then TPS="skipped"; return; fi
    local conn="${CONN[$target]}"
    [[ "$TRANSPORT" == unix ]] && conn="${CONN_UNIX[$target]}"
    [[ "$target" == direct ]] && env_args=(PGPASSWORD="$PASSWORD")
    pid="${PID[$target]:-}"
    wait_quiet
    s0="$(sample)"
    [[ -n "$pid" ]] && before="$(cpu_ticks "$pid")"
    # pgbench itself cannot run past -T unless its server (or its own thread) is stuck; the
    # margin covers -C and many-client connection setup. It runs in runs/ because -l names its
    # files from --log-prefix plus its PID (and .N per extra thread). `exec env` makes $! the
    # PID of pgbench itself; the shell polls it (a read timing out on a FIFO: no process per
    # tick) so that a hung run can be looked at before it is stopped.
    (cd "$TMP/runs" && exec env "${env_args[@]}" "$PGBENCH" -n -T "$DURATION" -l \
        --log-prefix "$name-$target.tx" "$@" "$conn") >"$prefix.out" 2>&1 &
    BENCH_PID=$!
    deadline=$((SECONDS + DURATION + HANG_TIMEOUT))
    while kill -0 "$BENCH_PID" 2>/dev/null && ((SECONDS < deadline)); do
        read -rt 0.2 <>"$TICK" || true
    done
    if kill -0 "$BENCH_PID" 2>/dev/null; then
        HANG_FILE="$prefix.hang"
        hang_snapshot "$target" >"$HANG_FILE" 2>&1 || true
        stop_pid "$BENCH_PID"
        status=124
    else
        wait "$BENCH_PID" || status=$?
    fi
    BENCH_PID=""
    if ((status != 0)); then
        if [[ -n "$HANG_FILE" ]]; then
            printf '\nerror: pgbench %s (%s) was still running %ss after its %ss run; stopped. What it was waiting on:\n' \
                "$name" "$target" "$HANG_TIMEOUT" "$DURATION" >&2
            cat "$HANG_FILE" >&2
            printf -- '--- pgbench output ---\n' >&2
            TPS="HUNG"
        else
            printf '\nerror: pgbench %s (%s) failed (exit status %s):\n' "$name" "$target" "$status" >&2
            TPS="FAILED"
        fi
        tail -n 8 "$prefix.out" >&2
        if [[ -n "$pid" ]]; then
            log_tail "${LOGF[$target]}" 15
            kill -0 "$pid" 2>/dev/null || { OK[$target]=0; printf 'error: %s has died\n' "$target" >&2; }
        fi
        rm -f "$prefix".tx.*
        FAILED=1
        return
    fi
    [[ -n "$pid" ]] && after="$(cpu_ticks "$pid")"
    s1="$(sample)"
    OTHERS="$(awk -v a="$s0" -v b="$s1" -v pooler=$((after - before)) -v hz="$CLK_TCK" -v ncpu="$NCPU" 'BEGIN {
        split(a, x); split(b, y)
        others = (y[1] - x[1]) - (y[2] - x[2]) - (y[3] - x[3]) - pooler
        if (others < 0) others = 0
        printf "%.0f", others / hz / ((y[4] - x[4]) / 1e9 * ncpu) * 100 }')"
    tx="$(awk -F': ' '/number of transactions actually processed/ {split($2, a, "/"); print a[1]}' "$prefix.out")"
    TPS="$(awk '/^tps = / {printf "%.0f", $3; exit}' "$prefix.out")"
    # Failed transactions (serialization or deadlock failures; other errors abort the client,
    # which fails the run above). pgbench before 15 has no such line: 0.
    FAILS="$(awk -F': ' '/^number of failed transactions/ {split($2, a, " "); print a[1]; exit}' "$prefix.out")"
    FAILS="${FAILS:-0}"
    CONN_MS="$(awk '/(initial|average) connection time = / {printf "%.2f", $5; exit}' "$prefix.out")"
    # Log lines: client_id transaction_no time_us script_no time_epoch time_us_part; "failed"
    # or "skipped" in the time column for transactions that did not complete.
    stats="$(cat "$prefix".tx.* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk '
        { v[NR] = $1; sum += $1 }
        END {
            if (NR == 0) { print "- -"; exit }
            i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1
            printf "%.3f %.3f\n", sum / NR / 1000, v[i] / 1000
        }')"
    rm -f "$prefix".tx.*
    read -r LAT P99 <<<"$stats"
    if [[ -n "$pid" ]]; then
        CPU="$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="${tx:-0}" \
            'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }')"
    fi
    TPS="${TPS:-?}" CONN_MS="${CONN_MS:--}"
}

declare -A R_TPS=() R_LAT=() R_P99=() R_CONN=() R_CPU=() R_OTHERS=() R_FAILS=()
KNOWN_HANGS=()
# This is meant for a quiet machine: other load shows in these and skews every number.
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
for scenario in "${SCENARIOS[@]}"; do
    IFS='|' read -r name args label TRANSPORT group flags <<<"$scenario"
    clients="$(sed -E 's/.*-c ([0-9]+).*/\1/' <<<"$args")"
    scenario_targets "$group"
    for target in "${SC_TARGETS[@]}"; do
        if [[ "$TRANSPORT" == unix && -z "${CONN_UNIX[$target]:-}" ]]; then
            R_TPS[$name/$target]="n/a"
            continue
        fi
        if [[ "$target" == pgb-tx* && "$args" == *"-M prepared"* && "$PGB_PREPARED" != 1 ]]; then
            # Without max_prepared_statements a statement prepared on one server connection
            # is not there on the next: pgbench fails. PgBouncer < 1.21 has no such setting.
            R_TPS[$name/$target]="n/a"
            continue
        fi
        log "$label, $clients client(s), ${DURATION}s: ${LABEL[$target]}"
        failed_before="$FAILED"
        # shellcheck disable=SC2086 # args are word-split on purpose
        run "$name" "$target" $args
        if [[ "$TPS" == HUNG && "$target" == pgb-* && " $flags " == *" pgb-may-hang "* ]]; then
            warn "PgBouncer hung where it is known to (see the top of this script): recorded, not counted as a failure"
            FAILED="$failed_before"
            KNOWN_HANGS+=("$name/$target")
        fi
        R_TPS[$name/$target]="$TPS" R_LAT[$name/$target]="$LAT" R_P99[$name/$target]="$P99"
        R_CONN[$name/$target]="$CONN_MS" R_CPU[$name/$target]="$CPU" R_OTHERS[$name/$target]="$OTHERS"
        R_FAILS[$name/$target]="$FAILS"
    done
done

LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- Idle clients -----------------------------------------------------------------------------
declare -A IDLE_KIB=()
IDLE_ROWS=()
if [[ "$IDLE" == 1 ]]; then
    max_count=0
    for n in $IDLE_COUNTS; do ((n > max_count)) && max_count=$n; done
    if ! command -v python3 >/dev/null; then
        warn "python3 not found: the idle-client test is skipped"
        IDLE=0
    elif ((NOFILE < max_count + 200)); then
        warn "ulimit -n is $NOFILE, too low for $max_count idle clients: the idle-client test is skipped"
        IDLE=0
    fi
fi
if [[ "$IDLE" == 1 ]]; then
    # Fresh processes, each started just before its test, so that the runs above leave
    # nothing in their memory. None keeps warm connections; each logs in upstream once (the
    # readiness query), which teaches it the server's parameters to greet idle clients with.
    LABEL[proxy-idle]="lakebase-proxy --lazy-attach"
    LABEL[pgb-idle]="PgBouncer session"
    LABEL[proxy-tx-idle]="lakebase-proxy transaction"
    LABEL[pgb-tx-idle]="PgBouncer transaction"
    idle_targets=()
    [[ "$MODE" != transaction ]] && idle_targets+=(proxy-idle pgb-idle)
    [[ "$MODE" != session ]] && idle_targets+=(proxy-tx-idle pgb-tx-idle)
    start_idle_target() {
        case "$1" in
            proxy-idle) start_proxy proxy-idle --lazy-attach --max-client-connections 20000 --max-pool-size "$POOL_SIZE" ;;
            pgb-idle) start_pgbouncer pgb-idle session "$POOL_SIZE" 0 ;;
            proxy-tx-idle)
                start_proxy proxy-tx-idle --pool-mode transaction --max-client-connections 20000 \
                    --max-pool-size 8 --max-prepared-statements 200
                ;;
            pgb-tx-idle) start_pgbouncer pgb-tx-idle transaction 8 0 "${PGB_TX_INI[@]}" ;;
        esac
    }
    counts="$(tr ' ' ',' <<<"$IDLE_COUNTS" | sed 's/,,*/,/g; s/^,//; s/,$//')"
    for target in "${idle_targets[@]}"; do
        [[ "$PGBOUNCER" != 1 && "$target" == pgb-* ]] && continue
        start_idle_target "$target"
        [[ "${OK[$target]:-0}" == 1 ]] || { IDLE_ROWS+=("${LABEL[$target]}|skipped"); FAILED=1; continue; }
        pid="${PID[$target]}"
        port="$(sed -E 's/.*port=([0-9]+).*/\1/' <<<"${CONN[$target]}")"
        log "idle clients ($counts) on ${LABEL[$target]} (PID $pid)"
        # Upstream connections the pooler holds while its clients sit idle.
        report="ss -Htnp state established '( dport = :$PG_PORT )' | grep -c 'pid=$pid,' || true"
        python3 "$IDLE_HELPER" --port "$port" --pid "$pid" --counts "$counts" --report-cmd "$report" \
            >"$TMP/runs/idle-$target.out" 2>"$TMP/runs/idle-$target.err" &
        HELPER_PID=$!
        if wait "$HELPER_PID"; then :; else
            printf 'error: the idle-client helper failed on %s:\n' "$target" >&2
            tail -n 5 "$TMP/runs/idle-$target.err" >&2
            log_tail "${LOGF[$target]}" 10
            FAILED=1
        fi
        HELPER_PID=""
        while IFS=$'\t' read -r kind n base rss per secs servers; do
            if [[ "$kind" == STAGE ]]; then
                IDLE_KIB[$target/$n]="$per"
                IDLE_ROWS+=("${LABEL[$target]}|$n|$((base / 1024))|$((rss / 1024))|$per|$secs|$servers")
            elif [[ "$kind" == CLOSED ]]; then
                IDLE_ROWS+=("${LABEL[$target]}|0 (closed)|$((base / 1024))|$((rss / 1024))|-|-|-")
            fi
        done <"$TMP/runs/idle-$target.out"
        stop_pid "$pid"
        unset "PID[$target]"
    done
fi

# --- Report ---------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "-" }'; }
# has_group GROUP...: whether any chosen scenario runs against one of these groups.
has_group() {
    local scenario group wanted
    for scenario in "${SCENARIOS[@]}"; do
        IFS='|' read -r _ _ _ _ group _ <<<"$scenario"
        for wanted in "$@"; do [[ "${group:-session}" == "$wanted" ]] && return 0; done
    done
    return 1
}

printf '\npgbench %s, scale %s, %ss per run, PostgreSQL %s over TLS (scram-sha-256) on loopback, %s CPUs\n' \
    "$("$PGBENCH" --version | awk '{print $3}')" "$SCALE" "$DURATION" \
    "$("$PG_BIN/postgres" --version | awk '{print $3}')" "$(nproc)"
printf 'proxy: %s\n' "$PROXY_BIN"
if [[ "$PGBOUNCER" == 1 ]]; then
    printf 'PgBouncer %s: %s; auth_type=trust, server_tls_sslmode=verify-full\n' "$PGB_VERSION" "$PGB_BIN"
fi
for target in "${NEEDED[@]}"; do
    [[ -n "${SETTINGS[$target]:-}" ]] && printf '  %-22s %s\n' "$target:" "${SETTINGS[$target]}"
done
printf 'load average (1/5/15 min) before the runs: %s, after: %s\n' "$LOAD_START" "$LOAD_END"
printf 'latency from pgbench -l (without connection time); CPU = pooler utime+stime per transaction;\n'
printf 'others%% = CPU used by processes outside the benchmark during the run, %% of all %s CPUs\n' "$NCPU"

# shellcheck disable=SC2059 # the table layout is the format
if has_group session; then
    printf '\nSession pooling; x direct / x pgb-sess = TPS relative to direct TLS / PgBouncer session mode\n\n'
    fmt='%-18s %3s  %-21s %7s %8s %8s %8s %8s %9s %10s %7s\n'
    printf "$fmt" mode c target TPS "mean ms" "p99 ms" "conn ms" "CPU us" "x direct" "x pgb-sess" "others%"
    printf "$fmt" ------------------ --- --------------------- ------- -------- -------- -------- -------- --------- ---------- -------
    for scenario in "${SCENARIOS[@]}"; do
        IFS='|' read -r name args label _ group _ <<<"$scenario"
        [[ "${group:-session}" == session ]] || continue
        clients="$(sed -E 's/.*-c ([0-9]+).*/\1/' <<<"$args")"
        scenario_targets session
        for target in "${SC_TARGETS[@]}"; do
            k="$name/$target"
            printf "$fmt" "$label" "$clients" "${LABEL[$target]}" "${R_TPS[$k]}" "${R_LAT[$k]:--}" "${R_P99[$k]:--}" \
                "${R_CONN[$k]:--}" "${R_CPU[$k]:--}" "$(ratio "${R_TPS[$k]}" "${R_TPS[$name/direct]:-}")" \
                "$(ratio "${R_TPS[$k]}" "${R_TPS[$name/pgb-session]:-}")" "${R_OTHERS[$k]:--}"
        done
    done
    if [[ "$PGBOUNCER" == 1 && "$PGB_PREPARED" != 1 && " ${SCENARIOS[*]} " == *"-M prepared"* ]]; then
        printf '(n/a: PgBouncer %s has no max_prepared_statements (1.21+), so -M prepared cannot run in transaction mode)\n' "$PGB_VERSION"
    fi
    if [[ " ${SCENARIOS[*]} " == *"|unix"* ]]; then
        printf '(unix rows: clients on the pooler'"'"'s unix socket, upstream still TLS; direct is n/a: PostgreSQL'"'"'s own socket has no TLS)\n'
    fi
fi

# shellcheck disable=SC2059 # the table layout is the format
if has_group tx8 tx20; then
    printf '\nTransaction pooling, 8 or 20 server connections (all warm), max prepared statements 200;\n'
    printf 'failed = pgbench'"'"'s failed transactions; x pgb = TPS and CPU us relative to PgBouncer'"'"'s row\n\n'
    fmt='%-18s %4s  %-21s %7s %8s %8s %8s %8s %6s %9s %9s %7s\n'
    printf "$fmt" mode c target TPS "mean ms" "p99 ms" "conn ms" "CPU us" failed "TPS x pgb" "CPU x pgb" "others%"
    printf "$fmt" ------------------ ---- --------------------- ------- -------- -------- -------- -------- ------ --------- --------- -------
    for scenario in "${SCENARIOS[@]}"; do
        IFS='|' read -r name args label _ group _ <<<"$scenario"
        [[ "${group:-session}" == tx* ]] || continue
        clients="$(sed -E 's/.*-c ([0-9]+).*/\1/' <<<"$args")"
        scenario_targets "$group"
        ref="$name/pgb-$group"
        for target in "${SC_TARGETS[@]}"; do
            k="$name/$target"
            printf "$fmt" "$label" "$clients" "${LABEL[$target]}" "${R_TPS[$k]}" "${R_LAT[$k]:--}" "${R_P99[$k]:--}" \
                "${R_CONN[$k]:--}" "${R_CPU[$k]:--}" "${R_FAILS[$k]:--}" "$(ratio "${R_TPS[$k]}" "${R_TPS[$ref]:-}")" \
                "$(ratio "${R_CPU[$k]:-}" "${R_CPU[$ref]:-}")" "${R_OTHERS[$k]:--}"
        done
    done
    for k in "${KNOWN_HANGS[@]}"; do
        printf '\n(%s HUNG: still running %ss after its %ss run, then stopped; PostgreSQL and the pooler showed:)\n' \
            "$k" "$HANG_TIMEOUT" "$DURATION"
        sed 's/^/    /' "$TMP/runs/${k/\//-}.hang"
    done
fi

# shellcheck disable=SC2059 # the table layout is the format
if ((${#IDLE_ROWS[@]} > 0)); then
    printf '\nIdle clients (logged in, then idle): VmRSS of the pooler process\n\n'
    ifmt='%-30s %10s %12s %11s %12s %10s %13s\n'
    printf "$ifmt" target clients "RSS before" "RSS after" "KiB/client" "connect s" "server conns"
    printf "$ifmt" ------------------------------ ---------- ------------ ----------- ------------ ---------- -------------
    for row in "${IDLE_ROWS[@]}"; do
        IFS='|' read -r t n b a per secs servers <<<"$row"
        printf "$ifmt" "$t" "$n" "${b:+$b MiB}" "${a:+$a MiB}" "${per:--}" "${secs:--}" "${servers:--}"
    done
fi

# --- Targets ----------------------------------------------------------------------------------
# verdict DESCRIPTION VALUE OP LIMIT: a run that failed or hung misses its target; a value that
# is not there (not run, skipped) is n/a.
verdict() {
    local what="$1" value="$2" op="$3" limit="$4" result
    result="$(awk -v v="$value" -v l="$limit" -v op="$op" 'BEGIN {
        if (v == "FAILED" || v == "HUNG") { print "MISSED"; exit }
        if (v !~ /^[0-9.]+$/ || l !~ /^[0-9.]+$/) { print "n/a"; exit }
        ok = (op == ">=") ? (v + 0 >= l + 0) : (v + 0 <= l + 0)
        print ok ? "met" : "MISSED" }')"
    printf '  %-6s  %-62s %8s %s %s\n' "$result" "$what" "$value" "$op" "$limit"
}
# fails KEY: failed transactions of a run that finished, else what became of it.
fails() {
    case "${R_TPS[$1]:--}" in
        FAILED | HUNG | skipped | n/a) echo "${R_TPS[$1]}" ;;
        -) echo "not run" ;;
        *) echo "${R_FAILS[$1]:--}" ;;
    esac
}
last_count="$(awk '{print $NF}' <<<"$IDLE_COUNTS")"
if [[ "$MODE" != transaction ]]; then
    printf '\nTargets (issue #5):\n'
    for n in 8 64; do
        verdict "select-only c=$n: proxy TPS / PgBouncer session" \
            "$(ratio "${R_TPS[select-c$n/proxy]:-}" "${R_TPS[select-c$n/pgb-session]:-}")" ">=" 1.2
        verdict "select-only c=$n: proxy TPS / direct TLS" \
            "$(ratio "${R_TPS[select-c$n/proxy]:-}" "${R_TPS[select-c$n/direct]:-}")" ">=" 0.9
    done
    verdict "select-only c=1: proxy mean latency ms (limit: PgBouncer session's)" \
        "${R_LAT[select-c1/proxy]:-}" "<=" "${R_LAT[select-c1/pgb-session]:--}"
    verdict "select-only c=8: proxy CPU us per transaction" "${R_CPU[select-c8/proxy]:-}" "<=" 12
    verdict "select-only -C c=8: proxy TPS / PgBouncer session" \
        "$(ratio "${R_TPS[select-C-c8/proxy]:-}" "${R_TPS[select-C-c8/pgb-session]:-}")" ">=" 1.2
    verdict "$last_count idle clients: proxy KiB RSS per client" "${IDLE_KIB[proxy-idle/$last_count]:-}" "<=" 8
fi
if [[ "$MODE" != session ]]; then
    printf '\nTargets, transaction pooling (proxy vs PgBouncer %s, both in transaction mode):\n' "${PGB_VERSION:-(not run)}"
    for m in simple extended prepared; do
        k="tx-select-$m-c64"
        verdict "select -M $m c=64 on 8: proxy TPS / PgBouncer's" \
            "$(ratio "${R_TPS[$k/proxy-tx8]:-}" "${R_TPS[$k/pgb-tx8]:-}")" ">=" 1.1
        verdict "select -M $m c=64 on 8: proxy CPU per tx / PgBouncer's" \
            "$(ratio "${R_CPU[$k/proxy-tx8]:-}" "${R_CPU[$k/pgb-tx8]:-}")" "<=" 0.8
    done
    verdict "tpc-b -M prepared c=32 on 8: proxy finished, failed tx" \
        "$(fails tx-tpcb-prepared-c32/proxy-tx8)" "<=" 0
    verdict "select-only c=1000 on 20: proxy finished, failed tx" \
        "$(fails tx-select-c1000/proxy-tx20)" "<=" 0
    verdict "$last_count idle clients, transaction mode: proxy KiB RSS each" \
        "${IDLE_KIB[proxy-tx-idle/$last_count]:-}" "<=" 4
    [[ "$PGBOUNCER" == 1 ]] && printf '  (PgBouncer: tpc-b -M prepared c=32 %s; c=1000 %s)\n' \
        "$(fails tx-tpcb-prepared-c32/pgb-tx8 | sed -E 's/^([0-9]+)$/finished, \1 failed/')" \
        "$(fails tx-select-c1000/pgb-tx20 | sed -E 's/^([0-9]+)$/finished, \1 failed/')"
fi
echo

if [[ "$FAILED" == 1 ]]; then
    echo "Some runs failed; see the errors above." >&2
    exit 1
fi
for target in "${NEEDED[@]}"; do
    [[ "${OK[$target]:-0}" == 1 ]] || { echo "Some targets were skipped; see the errors above." >&2; exit 1; }
done
