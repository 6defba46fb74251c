#!/usr/bin/env bash
# Try lakebase-proxy without a Databricks workspace: a throwaway PostgreSQL, the fake Lakebase
# (workspace API + TLS gateway, from fake-lakebase/) in front of it, and lakebase-proxy
# logging in with a personal access token, all on loopback. Prints the psql line to paste and
# runs until Ctrl-C. With --check it runs one query through the proxy and exits instead.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
[ "${1:-}" = "--check" ] && check=true

cargo build --quiet --bin lakebase-proxy --bin fake-lakebase --workspace
# Cargo's own answer, not ./target: CARGO_TARGET_DIR or a config's build.target-dir move it.
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/debug

pg_bindir=$(pg_config --bindir 2>/dev/null || true)
if [ ! -x "$pg_bindir/postgres" ]; then
  pg_bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
[ -x "$pg_bindir/postgres" ] || { echo "PostgreSQL server binaries not found (install Debian's postgresql)" >&2; exit 1; }

work=$(mktemp -d /tmp/lakebase-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL refuses to run as root: run it as `postgres` then.
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
"${as_pg[@]}" "$pg_bindir/initdb" -D "$work/data" -U postgres --auth=trust >/dev/null
# Unix socket only: the fake gateway is the one way in, as with the real Lakebase.
"${as_pg[@]}" "$pg_bindir/postgres" -D "$work/data" -p "$pg_port" -k "$work" -c listen_addresses= >"$work/postgres.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$pg_bindir/pg_isready" -q -h "$work" -p "$pg_port" && break; sleep 0.1; done
"$pg_bindir/psql" -X -q -h "$work" -p "$pg_port" -U postgres -c 'CREATE ROLE "demo@example.com" LOGIN' \
  -c 'CREATE DATABASE databricks_postgres OWNER "demo@example.com"'

"$bin/fake-lakebase" --postgres-socket-dir "$work" --postgres-port "$pg_port" >"$work/fake.env" 2>"$work/fake.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^HOST=' "$work/fake.env" && break; sleep 0.1; done
# API_URL, GATEWAY, CA_FILE, ENDPOINT, HOST
. "$work/fake.env"

proxy_port=$(free_port)
DATABRICKS_HOST="$API_URL" DATABRICKS_TOKEN=dapi-demo-token HOME="$work" \
  "$bin/lakebase-proxy" "$ENDPOINT?connect-to=$GATEWAY" --ca-file "$CA_FILE" --port "$proxy_port" \
  >"$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$pg_bindir/pg_isready" -q -h 127.0.0.1 -p "$proxy_port" && break; sleep 0.1; done

if $check; then
  "$pg_bindir/psql" -X -At -h 127.0.0.1 -p "$proxy_port" -c "SELECT current_user || ' in ' || current_database()"
  exit
fi
cat <<TXT

The fake workspace is at $API_URL, its Lakebase gateway at $GATEWAY (endpoint host $HOST).
lakebase-proxy is serving $ENDPOINT on 127.0.0.1:$proxy_port. Paste:

    psql -h 127.0.0.1 -p $proxy_port

Logs: $work/proxy.log. Press Ctrl-C to stop everything.
TXT
wait "${pids[-1]}"
