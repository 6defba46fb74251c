#!/usr/bin/env bash
# psql through lakebase-proxy. Run by tests/compat.rs with PGHOST/PGPORT/PGUSER/PGDATABASE
# set; prints `CHECK <name> ok|FAIL|n/a [detail]` per check, like the other clients.
# COMPAT_LOCK (set by tests/compat.rs in transaction mode, see tests/compat/python/compat.py):
# a directory that the checks holding a server connection while they wait for another session
# (LISTEN/NOTIFY, the cancel) create before they start and remove after.
set -u -o pipefail
export PGCLIENTENCODING=UTF8
UNICODE='ünïcødé ✓ 漢字'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# exclusive / release: take and give back COMPAT_LOCK, when it is set (mkdir is atomic). After
# 60 s the check runs without it (and fails if it really needed it).
held=0
exclusive() {
  [ -n "${COMPAT_LOCK:-}" ] || return 0
  local tries=0
  until mkdir "$COMPAT_LOCK" 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 3000 ] || return 0
    sleep 0.02
  done
  held=1
}
release() {
  [ "$held" = 1 ] && rmdir "$COMPAT_LOCK"
  held=0
}

# Notices (SQLSTATE 00000) are no check's output: the proxy sends one to a client that waits
# more than a second for a server connection, as clients do in transaction mode when the
# others hold every connection.
drop_notices() { sed -E '/^(psql:[^ ]*: )?NOTICE:  00000$/d'; }

# psql without ~/.psqlrc, unaligned tuples only, errors shown as their SQLSTATE alone
# (stable across server versions), stderr with stdout, notices dropped. (Its exit status is
# psql's: pipefail.)
sql() { psql -X -A -t -q -v VERBOSITY=sqlstate "$@" 2>&1 | drop_notices; }

# expect NAME WANT GOT [NOTE]: ok if GOT is WANT.
expect() {
  if [ "$3" = "$2" ]; then
    echo "CHECK $1 ok${4:+ $4}"
  else
    echo "CHECK $1 FAIL got: $(printf %s "$3" | head -c 300 | tr '\n' '|') want: $(printf %s "$2" | tr '\n' '|')"
  fi
}

echo "VERSION $(psql -X --version)"

expect simple "1|one" "$(sql -c "SELECT 1, 'one'")"

version=$(psql -X --version | grep -o '[0-9][0-9]*' | head -n 1)
if [ "$version" -ge 16 ]; then
  # (-c cannot mix SQL and meta-commands, so the line goes through stdin.)
  expect params "42" "$(printf '%s\n' 'SELECT $1::int + $2::int \bind 40 2 \g' | sql -f -)" '\bind'
else
  echo "CHECK params n/a psql $version has no \\bind (16+): it sends simple queries only"
fi

# psql has no client-side prepare (before 18's \parse): SQL PREPARE/EXECUTE is its way. (SQL
# PREPARE pins the session to its server connection in transaction mode, so the statement keeps
# its own name there.) Found by name: prepared by SQL, executed twice.
expect prepared "2|4|t|2" "$(sql -c 'PREPARE double (int) AS SELECT $1 * 2' -c 'EXECUTE double (1)' \
  -c 'EXECUTE double (2)' \
  -c "SELECT from_sql, generic_plans + custom_plans FROM pg_prepared_statements WHERE name = 'double'" | paste -sd '|')" \
  "SQL PREPARE/EXECUTE"

expect commit "1" "$(sql -c 'CREATE TEMP TABLE t (v int)' -c 'BEGIN' -c 'INSERT INTO t VALUES (1)' -c 'COMMIT' \
  -c 'SELECT count(*) FROM t')"
expect rollback "0" "$(sql -c 'CREATE TEMP TABLE t (v int)' -c 'BEGIN' -c 'INSERT INTO t VALUES (1)' -c 'ROLLBACK' \
  -c 'SELECT count(*) FROM t')"

# Without ON_ERROR_STOP psql goes on after an error, as interactive users do.
expect error_recovery "psql:<stdin>:2: ERROR:  22012
psql:<stdin>:3: ERROR:  25P02
recovered" "$(sql -f - <<'EOF'
BEGIN;
SELECT 1 / 0;
SELECT 1;
ROLLBACK;
SELECT 'recovered';
EOF
)"

# \copy streams a local file through COPY ... FROM STDIN / TO STDOUT.
for i in $(seq 1 1000); do printf '%s\t%s %s\n' "$i" "$UNICODE" "$i"; done >"$work/in.tsv"
expect copy_in "1000|500500|$UNICODE 999" "$(sql -c 'CREATE TEMP TABLE c (id int, name text)' \
  -c "\\copy c FROM '$work/in.tsv'" -c 'SELECT count(*), sum(id), max(name) FROM c')" '\copy'
failed=$(sql -c "\\copy (SELECT g, 'ü' || g FROM generate_series(1, 10000) g) TO '$work/out.tsv'")
expect copy_out "10000|10000	ü10000" "$failed$(wc -l <"$work/out.tsv")|$(tail -n 1 "$work/out.tsv")" '\copy'

# LISTEN here, NOTIFY from a second psql (run with \! while this session idles), then any
# command: psql prints the notification that arrived meanwhile, with the pid of the server
# process that ran the NOTIFY (pg_backend_pid() in the same statement). The channel is this
# program's own: copies of it run at the same time.
channel=compat_psql_$$
exclusive
out=$(sql -f - <<EOF
LISTEN $channel;
\! psql -X -A -t -v VERBOSITY=sqlstate -c "SELECT pg_backend_pid() FROM pg_notify('$channel', '$UNICODE')"
SELECT 'next';
EOF
)
release
pid=$(printf %s "$out" | head -n 1)
expect listen_notify "$pid
next
Asynchronous notification \"$channel\" with payload \"$UNICODE\" received from server process with PID $pid." "$out"

# Ctrl-C: psql answers SIGINT by sending a CancelRequest for the running query. (A background
# job of a script ignores SIGINT, but psql installs its own handler; it must be psql itself in
# the background, not a shell function around it.) The signal is sent once the query is seen
# running: before that psql has nothing to cancel and would sleep the full 30 s. The
# application name is this program's own: copies of it run at the same time.
app=compat-psql-cancel-$$
exclusive
PGAPPNAME=$app psql -X -A -t -q -v VERBOSITY=sqlstate -c 'SELECT pg_sleep(30)' >"$work/cancel.out" 2>&1 &
psql_pid=$!
for _ in $(seq 1 100); do
  running=$(sql -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app' AND state = 'active'")
  [ "$running" = 1 ] && break
  sleep 0.1
done
started=$(date +%s%N)
kill -INT "$psql_pid"
wait "$psql_pid"
took_ms=$((($(date +%s%N) - started) / 1000000))
release
if [ "$running" != 1 ]; then
  echo "CHECK cancel FAIL pg_sleep(30) not seen running in pg_stat_activity within 10 s: $running"
elif [ "$took_ms" -lt 5000 ]; then
  expect cancel "Cancel request sent
ERROR:  57014" "$(drop_notices <"$work/cancel.out")" "SIGINT, psql exited ${took_ms} ms later"
else
  echo "CHECK cancel FAIL psql exited ${took_ms} ms after SIGINT: $(tr '\n' '|' <"$work/cancel.out")"
fi

hex=$(for i in $(seq 0 255); do printf '%02x' "$i"; done)
expect bytea "\\x$hex|256" "$(sql -c "SELECT b, length(b) FROM decode('$hex', 'hex') AS b")"
expect unicode "UTF8|$UNICODE|12" "$(sql -c "SELECT current_setting('client_encoding'), '$UNICODE', char_length('$UNICODE')")"

rows=$(sql -c "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g" | wc -l)
bytes=$(sql -c "SELECT repeat('x', 10 * 1024 * 1024)" | wc -c)
expect large_result "100000 rows, 10485761 bytes" "$rows rows, $bytes bytes"

echo "CHECK concurrent n/a psql holds one session"

# \watch repeats a query until it fails (or Ctrl-C); a query that fails on its 3rd run stops
# it in any psql version (a count, \watch c=N, needs psql 16).
expect watch "tick|5
tick|10
psql:<stdin>:2: ERROR:  22012
after" "$(sql -P title= -f - <<'EOF' | sed '/^$/d'
CREATE TEMP SEQUENCE s;
SELECT 'tick', 10 / (3 - nextval('s')::int) \watch 0.1
SELECT 'after';
EOF
)" "stopped by an error on the 3rd run"

# ON_ERROR_STOP: the script stops at the first error and psql exits with status 3.
out=$(sql -v ON_ERROR_STOP=1 -f - <<'EOF'
SELECT 'before';
SELECT 1 / 0;
SELECT 'after';
EOF
)
expect on_error_stop "status 3: before
psql:<stdin>:2: ERROR:  22012" "status $?: $out"
