"""psycopg2 through lakebase-proxy (run by tests/compat.rs).

psycopg2 speaks only the simple query protocol: it interpolates parameters itself.
COMPAT_MODE and COMPAT_LOCK: see compat.py."""

import contextlib
import io
import select
import threading
import time

import compat
from compat import BYTES, LARGE_ROWS, LARGE_VALUE, UNICODE, UNICODE_CHARS, equal, ensure

psycopg2 = compat.require("psycopg2")
compat.require("psycopg2.pool")
compat.require("psycopg2.errors")
compat.version(f"psycopg2 {psycopg2.__version__.split()[0]}, libpq {psycopg2.extensions.libpq_version()}")


@contextlib.contextmanager
def connect():
    # An empty DSN: libpq takes PGHOST/PGPORT/PGUSER/PGDATABASE, no password.
    # (psycopg2's own `with conn` ends a transaction but does not close the connection.)
    conn = psycopg2.connect("")
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def run(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def simple():
    with connect() as conn:
        run(conn, "CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        equal(one(conn, "SELECT sum(v) FROM t")[0], 3)


def params():
    with connect() as conn:
        equal(one(conn, "SELECT %s::int + %s, %s::text || '!'", (40, 2, "hi")), (42, "hi!"))
    return "interpolated by psycopg2 (it has no extended protocol)"


def prepared():
    with connect() as conn:
        # No driver API for server-side statements: SQL PREPARE/EXECUTE is the psycopg2 way.
        run(conn, "PREPARE double (int) AS SELECT $1 * 2")
        for i in range(3):
            equal(one(conn, "EXECUTE double (%s)", (i,))[0], i * 2)
        # SQL PREPARE pins the session to its server connection in transaction mode, so the
        # statement keeps its own name there: found by name, executed 3 times.
        row = one(conn, "SELECT from_sql, generic_plans + custom_plans FROM pg_prepared_statements WHERE name = 'double'")
        equal(row, (True, 3), "from_sql, executions")
    return "SQL PREPARE/EXECUTE"


def commit():
    with connect() as conn:
        run(conn, "CREATE TEMP TABLE t (v int)")
        conn.autocommit = False  # psycopg2's default: BEGIN before the first statement
        run(conn, "INSERT INTO t VALUES (1)")
        conn.commit()
        equal(one(conn, "SELECT count(*) FROM t")[0], 1)


def rollback():
    with connect() as conn:
        run(conn, "CREATE TEMP TABLE t (v int)")
        conn.autocommit = False
        run(conn, "INSERT INTO t VALUES (1)")
        conn.rollback()
        equal(one(conn, "SELECT count(*) FROM t")[0], 0)


def error_recovery():
    with connect() as conn:
        conn.autocommit = False
        try:
            one(conn, "SELECT 1 / 0")
            raise AssertionError("1/0 did not fail")
        except psycopg2.errors.DivisionByZero as e:
            equal(e.pgcode, "22012", "sqlstate")
        try:
            one(conn, "SELECT 1")
            raise AssertionError("a statement in the failed transaction succeeded")
        except psycopg2.errors.InFailedSqlTransaction as e:
            equal(e.pgcode, "25P02", "sqlstate")
        conn.rollback()
        equal(one(conn, "SELECT 'recovered'")[0], "recovered")


def copy_in():
    with connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE c (id int, name text)")
        data = "".join(f"{i}\t{UNICODE} {i}\n" for i in range(1000))
        cur.copy_expert("COPY c FROM STDIN", io.StringIO(data))
        equal(one(conn, "SELECT count(*), sum(id), max(name) FROM c"), (1000, 499500, f"{UNICODE} 999"))


def copy_out():
    with connect() as conn, conn.cursor() as cur:
        out = io.StringIO()
        cur.copy_expert("COPY (SELECT g, 'ü' || g FROM generate_series(1, 10000) g) TO STDOUT", out)
        lines = out.getvalue().splitlines()
        equal((len(lines), lines[-1]), (10000, "10000\tü10000"))


def listen_notify():
    channel = compat.channel("psycopg2")
    with compat.exclusive(), connect() as listener, connect() as sender:
        run(listener, f"LISTEN {channel}")
        # The NOTIFY and pg_backend_pid() in one statement: the pid of the server process
        # that sent it, in transaction mode too.
        pid = one(sender, "SELECT pg_backend_pid() FROM pg_notify(%s, %s)", (channel, UNICODE))[0]
        deadline = time.monotonic() + 5
        while not listener.notifies and time.monotonic() < deadline:
            # psycopg2's documented way: wait for the socket, then poll() reads the message.
            select.select([listener], [], [], max(0, deadline - time.monotonic()))
            listener.poll()
        ensure(listener.notifies, "no notification within 5s")
        note = listener.notifies.pop(0)
        equal((note.channel, note.payload), (channel, UNICODE))
        equal(note.pid, pid, "sender pid")
        if not compat.TRANSACTION:
            # BackendKeyData names the same server process (in transaction mode it carries
            # the proxy's key).
            equal(note.pid, sender.info.backend_pid, "sender pid from BackendKeyData")


def cancel():
    with connect() as conn:
        threading.Timer(compat.CANCEL_AFTER, conn.cancel).start()
        started = time.monotonic()
        try:
            one(conn, "SELECT pg_sleep(30)")
            raise AssertionError("pg_sleep(30) was not cancelled")
        except psycopg2.errors.QueryCanceled as e:
            equal(e.pgcode, "57014", "sqlstate")
        took = time.monotonic() - started
        ensure(took < compat.CANCEL_LIMIT, f"cancel took {took:.1f}s")
        equal(one(conn, "SELECT 1")[0], 1, "after the cancel")
        return f"cancelled after {took:.1f}s"


def bytea():
    with connect() as conn:
        got = one(conn, "SELECT %s::bytea", (psycopg2.Binary(BYTES),))[0]
        equal(bytes(got), BYTES)


def unicode():
    with connect() as conn:
        equal(conn.encoding, "UTF8", "client encoding")
        row = one(conn, f"SELECT %s::text, char_length(%s::text), '{UNICODE}'", (UNICODE, UNICODE))
        equal(row, (UNICODE, UNICODE_CHARS, UNICODE))


def large_result():
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT g, repeat('x', 100) FROM generate_series(1, %s) g", (LARGE_ROWS,))
        rows = cur.fetchall()
        equal((len(rows), rows[-1][0]), (LARGE_ROWS, LARGE_ROWS), "rows")
        equal(len(one(conn, "SELECT repeat('x', %s)", (LARGE_VALUE,))[0]), LARGE_VALUE, "value out")
        big = psycopg2.Binary(bytes(LARGE_VALUE))
        equal(one(conn, "SELECT length(%s::bytea)", (big,))[0], LARGE_VALUE, "value in")


def concurrent():
    # ThreadedConnectionPool: 8 threads share at most 4 sessions.
    pool = psycopg2.pool.ThreadedConnectionPool(2, 4, "")
    pids, failures = [], []
    slots = threading.Semaphore(4)  # the pool raises instead of waiting when exhausted

    def work():
        with slots:
            conn = pool.getconn()
            try:
                server = one(conn, "SELECT pg_backend_pid() FROM pg_sleep(0.2)")[0]
                pids.append((conn.info.backend_pid, server))
                conn.rollback()
            except Exception as e:
                failures.append(e)
            finally:
                pool.putconn(conn)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.closeall()
    ensure(not failures, f"pool queries failed: {failures}")
    return f"ThreadedConnectionPool, {compat.check_sessions(pids, 8)}"


compat.run(
    [
        ("simple", simple),
        ("params", params),
        ("prepared", prepared),
        ("commit", commit),
        ("rollback", rollback),
        ("error_recovery", error_recovery),
        ("copy_in", copy_in),
        ("copy_out", copy_out),
        ("listen_notify", listen_notify),
        ("cancel", cancel),
        ("bytea", bytea),
        ("unicode", unicode),
        ("large_result", large_result),
        ("concurrent", concurrent),
    ]
)
