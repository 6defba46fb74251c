#!/usr/bin/env bash
# Soak test (opt-in, not run by CI): lakebase-proxy against the fake Lakebase for a long time,
# with credentials and upstream connections short-lived enough to be replaced many times.
#
# Why: the unit, property and end-to-end tests run for seconds, while a real deployment runs
# for days with OAuth tokens expiring every hour and upstream connections being retired. This
# script compresses that: tokens minted with the API's shortest lifetime (--token-ttl 300s, so
# the proxy fetches a new one every ~3.5-4 min) and upstream connections retired after a
# minute (--max-lifetime 60s), under steady pgbench load plus a fresh login every second. It
# reports transactions, failures (must be 0), upstream logins (rotations), token fetches and
# the proxy's memory, sampled over the whole run (a leak shows as a climbing RSS).
#
# Everything runs on this machine over loopback, built on scripts/try-fake-lakebase.sh: a
# throwaway PostgreSQL (unix socket only, as `postgres` when run as root), the `fake-lakebase`
# binary in front of it (workspace API + TLS gateway), and lakebase-proxy logging in with a
# personal access token.
#
#   bash benches/soak.sh                          # build, then 30 minutes
#   SKIP_BUILD=1 DURATION=3m bash benches/soak.sh
#
# Environment:
#   DURATION      run length: seconds, or with an s/m/h suffix (default 30m)
#   SCALE         pgbench scale factor for `pgbench -i` (default 5, ~75 MB)
#   CLIENTS       pgbench clients (default 8), THREADS pgbench threads (default 2)
#   PGBENCH_ARGS  extra pgbench arguments for the run, e.g. "-S" or "-C" (default none)
#   POOL_MODE     the proxy's --pool-mode: session (default) or transaction; in transaction mode
#                 connections are released (and retired by --max-lifetime) after every
#                 transaction, so they rotate under load, not only between sessions
#   POOL_SIZE     the proxy's --max-pool-size (default 20)
#   SKIP_BUILD    1 = use the existing target/release binaries
#   LOG_DIR       if set, the logs (proxy, fake, postgres, pgbench, RSS samples) are copied there
#
# Note: pgbench's clients keep their sessions (and so their upstream connections) for the
# whole run: --max-lifetime retires a connection when its session releases it, never under a
# running session. Rotations therefore come from the psql loop's sessions, whose pooled
# connection is replaced about once a minute, and from the pool's maintenance. PGBENCH_ARGS=-C
# (a new client connection per transaction) makes pgbench's own sessions rotate too.
#
# Exit status: 0 when everything succeeded; 1 when any transaction failed, a pgbench client
# aborted, a psql login failed, or the proxy died.

set -euo pipefail

DURATION="${DURATION:-30m}"
SCALE="${SCALE:-5}"
CLIENTS="${CLIENTS:-8}"
POOL_MODE="${POOL_MODE:-session}"
POOL_SIZE="${POOL_SIZE:-20}"
THREADS="${THREADS:-2}"
PGBENCH_ARGS="${PGBENCH_ARGS:-}"
SKIP_BUILD="${SKIP_BUILD:-0}"
LOG_DIR="${LOG_DIR:-}"
# The shortest token lifetime the credential API accepts, and a minute per upstream connection.
TOKEN_TTL=300s
MAX_LIFETIME=60s
# How often the proxy's memory is sampled.
RSS_INTERVAL=5
DATABASE=databricks_postgres

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

# DURATION in seconds: pgbench -T takes seconds.
case "$DURATION" in
    *h) SECONDS_TOTAL=$(( ${DURATION%h} * 3600 )) ;;
    *m) SECONDS_TOTAL=$(( ${DURATION%m} * 60 )) ;;
    *s) SECONDS_TOTAL=$(( ${DURATION%s} )) ;;
    *) SECONDS_TOTAL=$(( DURATION )) ;;
esac
(( SECONDS_TOTAL > 0 )) || die "DURATION must be positive (got '$DURATION')"

scrub_pg_env
find_postgres

# --- Cleanup: only what this script started, by PID --------------------------------------
WORK=""
PG_STARTED=0
FAKE_PID=""
PROXY_PID=""
LOGIN_LOOP_PID=""
SAMPLER_PID=""
PGBENCH_PID=""
cleanup() {
    local status=$?
    set +e
    stop_pid "$PGBENCH_PID"
    stop_pid "$LOGIN_LOOP_PID"
    stop_pid "$SAMPLER_PID"
    stop_pid "$PROXY_PID"
    stop_pid "$FAKE_PID"
    if [[ "$PG_STARTED" == 1 ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null 2>&1
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ -n "$LOG_DIR" ]]; then
            mkdir -p "$LOG_DIR" && cp "$WORK"/*.log "$WORK"/*.txt "$LOG_DIR"/ 2>/dev/null
        fi
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

proxy_alive() { kill -0 "$PROXY_PID" 2>/dev/null; }

# --- Build --------------------------------------------------------------------------------
if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building lakebase-proxy and fake-lakebase (release)"
    (cd "$ROOT" && cargo build --release --bin lakebase-proxy --bin fake-lakebase --workspace)
fi
for binary in lakebase-proxy fake-lakebase; do
    [[ -x "$BIN/$binary" ]] || die "$BIN/$binary does not exist (build it or unset SKIP_BUILD)"
done

WORK="$(mktemp -d /tmp/lakebase-soak.XXXXXX)"
chmod 755 "$WORK"
if [[ "$(id -u)" == 0 ]]; then chown postgres: "$WORK"; fi

# --- Throwaway PostgreSQL: unix socket only, the fake gateway is the one way in ----------
PG_PORT=5432   # only names the socket file inside $WORK
log "starting PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') (unix socket in $WORK)"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -U postgres -E UTF8 --locale=C --auth=trust >"$WORK/initdb.log" 2>&1 \
    || { tail -20 "$WORK/initdb.log" >&2; die "initdb failed"; }
# Durability is not what is soaked here; without fsync the disk does not set the pace.
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 start \
    -o "-p $PG_PORT -k $WORK -c listen_addresses= -c fsync=off -c synchronous_commit=off -c max_connections=100" \
    >/dev/null || { tail -20 "$WORK/postgres.log" >&2; die "PostgreSQL did not start"; }
PG_STARTED=1
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PG_PORT" -U postgres -d postgres \
    -c 'CREATE ROLE "demo@example.com" LOGIN' \
    -c "CREATE DATABASE $DATABASE OWNER \"demo@example.com\""

# --- The fake Lakebase: workspace API and TLS gateway on loopback -----------------------
log "starting fake-lakebase"
"$BIN/fake-lakebase" --postgres-socket-dir "$WORK" --postgres-port "$PG_PORT" >"$WORK/fake.env" 2>"$WORK/fake.log" &
FAKE_PID=$!
for _ in $(seq 100); do grep -q '^HOST=' "$WORK/fake.env" && break; sleep 0.1; done
grep -q '^HOST=' "$WORK/fake.env" || { cat "$WORK/fake.log" >&2; die "fake-lakebase did not start"; }
# API_URL, GATEWAY, CA_FILE, ENDPOINT, HOST
. "$WORK/fake.env"
[[ "$API_URL" == http://127.0.0.1:* || "$API_URL" == https://127.0.0.1:* ]] || die "fake API not on loopback: $API_URL"
[[ "$GATEWAY" == 127.0.0.1:* ]] || die "fake gateway not on loopback: $GATEWAY"

# --- The proxy: PAT auth, short tokens, short upstream lifetimes, debug log --------------
PROXY_PORT="$(free_port)" || die "no free port for the proxy"
log "starting lakebase-proxy on 127.0.0.1:$PROXY_PORT (--token-ttl $TOKEN_TTL --max-lifetime $MAX_LIFETIME --pool-mode $POOL_MODE)"
DATABRICKS_HOST="$API_URL" DATABRICKS_TOKEN=dapi-demo-token HOME="$WORK" NO_COLOR=1 \
    "$BIN/lakebase-proxy" "$ENDPOINT?connect-to=$GATEWAY" --ca-file "$CA_FILE" \
    --address 127.0.0.1 --port "$PROXY_PORT" \
    --token-ttl "$TOKEN_TTL" --max-lifetime "$MAX_LIFETIME" \
    --pool-mode "$POOL_MODE" --max-pool-size "$POOL_SIZE" \
    --log-level lakebase_proxy=debug >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 150); do
    proxy_alive || { tail -20 "$WORK/proxy.log" >&2; die "the proxy exited before accepting connections"; }
    "$PG_ISREADY" -q -h 127.0.0.1 -p "$PROXY_PORT" && break
    sleep 0.1
done
"$PG_ISREADY" -q -h 127.0.0.1 -p "$PROXY_PORT" || { tail -20 "$WORK/proxy.log" >&2; die "the proxy is not accepting connections"; }

# Connection string for every client below: the proxy needs no password.
CONN=(-h 127.0.0.1 -p "$PROXY_PORT" -d "$DATABASE")

log "pgbench -i -s $SCALE through the proxy"
timeout 600 "$PGBENCH" -i -s "$SCALE" -q "${CONN[@]}" >"$WORK/pgbench-init.log" 2>&1 \
    || { tail -20 "$WORK/pgbench-init.log" >&2; tail -20 "$WORK/proxy.log" >&2; die "pgbench -i failed"; }

# --- Memory sampler: the proxy's VmRSS every RSS_INTERVAL s ----------------------------
: >"$WORK/rss.txt"
(
    while [[ -r "/proc/$PROXY_PID/status" ]]; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status" 2>/dev/null || true)
        [[ -n "$rss" ]] && echo "$(date +%s) $rss" >>"$WORK/rss.txt"
        sleep "$RSS_INTERVAL"
    done
) &
SAMPLER_PID=$!

# --- Fresh logins: one new psql connection per second, stopping by itself at the deadline -
DEADLINE=$(( $(date +%s) + SECONDS_TOTAL ))
: >"$WORK/logins.txt"
(
    while (( $(date +%s) < DEADLINE )); do
        # A NOTICE (the proxy saying a client waits for a busy pool) goes to stderr and is no failure.
        if out=$(timeout 30 "$PSQL" -X -At "${CONN[@]}" -c 'SELECT 1' 2>"$WORK/login.err") && [[ "$out" == 1 ]]; then
            echo ok >>"$WORK/logins.txt"
        else
            out="$out $(cat "$WORK/login.err")"
            echo "failed $(date -u +%H:%M:%S) ${out//$'\n'/ }" >>"$WORK/logins.txt"
        fi
        sleep 1
    done
) &
LOGIN_LOOP_PID=$!

# --- The load -------------------------------------------------------------------------
log "pgbench -c $CLIENTS -j $THREADS -T $SECONDS_TOTAL${PGBENCH_ARGS:+ $PGBENCH_ARGS} through the proxy (until $(date -d "@$DEADLINE" +%H:%M:%S))"
STARTED_AT=$(date +%s)
# shellcheck disable=SC2086 # PGBENCH_ARGS is a list of words
timeout $((SECONDS_TOTAL + 120)) "$PGBENCH" -n -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_TOTAL" -P 30 $PGBENCH_ARGS \
    "${CONN[@]}" >"$WORK/pgbench.log" 2>&1 &
PGBENCH_PID=$!
pgbench_status=0
wait "$PGBENCH_PID" || pgbench_status=$?
PGBENCH_PID=""
# The login loop ends at the deadline too; it has at most one psql (30 s bounded) to finish.
wait "$LOGIN_LOOP_PID" 2>/dev/null || true
LOGIN_LOOP_PID=""
ELAPSED=$(( $(date +%s) - STARTED_AT ))

# --- Results --------------------------------------------------------------------------
proxy_status="alive"
final_rss="" hwm=""
if proxy_alive; then
    final_rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$PROXY_PID/status")
else
    proxy_status="DIED"
fi
stop_pid "$SAMPLER_PID"; SAMPLER_PID=""

field() { sed -n "s/^$1 *\([0-9.]*\).*/\1/p" "$WORK/pgbench.log" | head -n 1; }
transactions=$(field 'number of transactions actually processed:')
failed=$(field 'number of failed transactions:')
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pgbench.log" | head -n 1)
latency=$(field 'latency average =')
aborted=$(grep -cE 'client [0-9]+ (script [0-9]+ )?aborted' "$WORK/pgbench.log" || true)
# Progress lines ("progress: 30.0 s, 1234.5 tps, ..."): the slowest and fastest interval.
read -r tps_min tps_max < <(awk '/^progress:/ {v=$4+0; if (min=="" || v<min) min=v; if (v>max) max=v} END {print (min==""?"-":min), (max==""?"-":max)}' "$WORK/pgbench.log")
logins_ok=$(grep -c '^ok' "$WORK/logins.txt" || true)
logins_failed=$(grep -c '^failed' "$WORK/logins.txt" || true)
rotations=$(grep -c 'upstream login complete' "$WORK/proxy.log" || true)
# Lakebase database credentials only (the workspace PAT is "fetched" once too).
token_fetches=$(grep -c 'credential fetched source=Lakebase' "$WORK/proxy.log" || true)
warnings=$(grep -cE '(^|[[:space:]])(WARN|ERROR)[[:space:]]' "$WORK/proxy.log" || true)
read -r rss_peak rss_first rss_samples < <(awk '{if ($2>max) max=$2; if (NR==1) first=$2} END {print max+0, first+0, NR}' "$WORK/rss.txt")
mib() { [[ -n "$1" ]] && awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}' || echo "-"; }

[[ -n "$transactions" ]] || transactions="?"
[[ -n "$failed" ]] || failed="?"

row() { printf '%-44s %s\n' "$1" "$2"; }
echo
echo "Soak: $ELAPSED s of pgbench -c $CLIENTS -j $THREADS (scale $SCALE${PGBENCH_ARGS:+, $PGBENCH_ARGS}) + one psql login per second,"
echo "through lakebase-proxy --token-ttl $TOKEN_TTL --max-lifetime $MAX_LIFETIME --pool-mode $POOL_MODE --max-pool-size $POOL_SIZE"
echo "against fake-lakebase on loopback."
echo
row metric value
row "--------------------------------------------" "--------------------"
row "pgbench transactions" "$transactions"
row "pgbench TPS (whole run)" "${tps:--}"
row "pgbench TPS per 30 s interval (min / max)" "$tps_min / $tps_max"
row "pgbench latency average" "${latency:--} ms"
row "pgbench failed transactions" "$failed"
row "pgbench aborted clients" "$aborted (exit status $pgbench_status)"
row "psql logins ok / failed" "$logins_ok / $logins_failed"
row "upstream logins (rotations)" "$rotations"
row "Lakebase token fetches" "$token_fetches"
row "proxy RSS first sample" "$(mib "$rss_first")"
row "proxy RSS peak ($rss_samples samples, every ${RSS_INTERVAL} s)" "$(mib "$rss_peak")"
row "proxy RSS final" "$(mib "$final_rss")"
row "proxy VmHWM (the kernel's peak RSS)" "$(mib "$hwm")"
row "proxy WARN/ERROR log lines" "$warnings"
row "proxy at the end" "$proxy_status"

problems=()
[[ "$failed" == 0 ]] || problems+=("failed transactions: $failed")
[[ "$aborted" == 0 && "$pgbench_status" == 0 ]] || problems+=("pgbench exited $pgbench_status with $aborted aborted client(s)")
[[ "$logins_failed" == 0 ]] || problems+=("$logins_failed psql login(s) failed")
[[ "$proxy_status" == alive ]] || problems+=("the proxy died")
if ((${#problems[@]})); then
    printf '\nFAILED: %s\n' "${problems[@]}" >&2
    echo "--- pgbench (tail)" >&2; tail -n 15 "$WORK/pgbench.log" >&2
    echo "--- failed logins (first 5)" >&2; grep '^failed' "$WORK/logins.txt" | head -n 5 >&2 || true
    echo "--- proxy log WARN/ERROR (last 10)" >&2; grep -E '(WARN|ERROR)' "$WORK/proxy.log" | tail -n 10 >&2 || true
    exit 1
fi
echo
echo "OK: no failed transactions, no failed logins."
