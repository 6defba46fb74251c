#!/usr/bin/env bash
# pgbench through lakebase-proxy. Run by tests/compat.rs with PGHOST/PGPORT/PGUSER/PGDATABASE
# set; prints `CHECK <name> ok|FAIL|n/a [detail]` per check, like the other clients.
set -u
work=$(mktemp -d)

# pgbench's tables have fixed names and `pgbench -i` drops them first, so copies of this
# program running at the same time (tests/compat.rs's transaction-mode pass) each work in a
# schema of their own, through search_path in the startup options. (The proxy pools by
# database, role and options: each copy's pgbench clients share a pool of their own.)
schema=compat_pgbench_$$
export PGOPTIONS="-c search_path=$schema"
trap 'psql -X -q -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1; rm -rf "$work"' EXIT
psql -X -q -c "CREATE SCHEMA $schema" >/dev/null

# bench NAME NOTE ARGS...: ok if pgbench exits 0 and reports every transaction and no failures.
bench() {
  local name=$1 note=$2 out
  shift 2
  if out=$(pgbench -n "$@" 2>&1) && grep -q 'number of failed transactions: 0' <<<"$out" \
    && grep -Eq 'actually processed: ([0-9]+)/\1$' <<<"$out"; then
    echo "CHECK $name ok $note"
  else
    echo "CHECK $name FAIL $(tr '\n' '|' <<<"$out" | tail -c 400)"
  fi
}

# Notices (SQLSTATE 00000) dropped: the proxy sends one to a client that waits more than a
# second for a server connection, as pgbench's own clients keep them busy in transaction mode.
balance() {
  psql -X -A -t -v VERBOSITY=sqlstate -c 'SELECT bbalance FROM pgbench_branches WHERE bid = 1' 2>&1 \
    | sed '/^NOTICE:  00000$/d'
}

echo "VERSION $(pgbench --version)"

# -i: creates the tables and loads pgbench_accounts (100,000 rows) with COPY FROM STDIN.
if out=$(pgbench -i -s 1 -q 2>&1); then
  echo "CHECK init ok"
  echo "CHECK copy_in ok pgbench -i loads 100,000 rows with COPY"
else
  echo "CHECK init FAIL $(tr '\n' '|' <<<"$out" | tail -c 400)"
  echo "CHECK copy_in FAIL pgbench -i failed"
fi

# The built-in TPC-B-like script, in each of pgbench's protocol modes, 4 sessions at once.
bench simple "-M simple" -M simple -c 4 -j 2 -t 50
bench params "-M extended" -M extended -c 4 -j 2 -t 50
bench prepared "-M prepared" -M prepared -c 4 -j 2 -t 50
bench concurrent "8 sessions, -C (a new connection per transaction)" -c 8 -j 2 -t 20 -C

# Custom scripts: a committed and a rolled-back update of one row, checked with psql.
printf 'BEGIN;\nUPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;\nCOMMIT;\n' >"$work/commit.sql"
printf 'BEGIN;\nUPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;\nROLLBACK;\n' >"$work/rollback.sql"
before=$(balance)
bench commit "" -f "$work/commit.sql" -c 2 -t 10 >"$work/commit.out"
after=$(balance)
if grep -q ' ok' "$work/commit.out" && [ "$after" = "$((before + 20))" ]; then
  echo "CHECK commit ok"
else
  echo "CHECK commit FAIL balance $before -> $after (want +20): $(cat "$work/commit.out")"
fi
bench rollback "" -f "$work/rollback.sql" -c 2 -t 10 >"$work/rollback.out"
final=$(balance)
if grep -q ' ok' "$work/rollback.out" && [ "$final" = "$after" ]; then
  echo "CHECK rollback ok"
else
  echo "CHECK rollback FAIL balance $after -> $final (want unchanged): $(cat "$work/rollback.out")"
fi

echo "CHECK error_recovery n/a pgbench ends a client at a non-retryable error (--max-tries retries only serialization and deadlock failures)"
echo "CHECK copy_out n/a pgbench only loads data"
echo "CHECK listen_notify n/a pgbench has no LISTEN support"
echo "CHECK cancel n/a pgbench has no cancel"
for check in bytea unicode large_result; do
  echo "CHECK $check n/a pgbench discards query results"
done
