"""psycopg 3 and psycopg_pool through lakebase-proxy (run by tests/compat.rs).

COMPAT_PREPARE_THRESHOLD=N sets psycopg's prepare_threshold on every connection (0: every
statement is prepared server-side under a name at its first execution); unset, psycopg's
default (prepared at the 6th execution of the same query). COMPAT_MODE and COMPAT_LOCK: see
compat.py."""

import os
import threading
import time

import compat
from compat import BYTES, LARGE_ROWS, LARGE_VALUE, UNICODE, UNICODE_CHARS, equal, ensure

psycopg = compat.require("psycopg")
psycopg_pool = compat.require("psycopg_pool")
errors = psycopg.errors
THRESHOLD = os.environ.get("COMPAT_PREPARE_THRESHOLD")
OPTIONS = {"prepare_threshold": int(THRESHOLD)} if THRESHOLD is not None else {}
compat.version(
    f"psycopg {psycopg.__version__}, psycopg_pool {psycopg_pool.__version__}, libpq {psycopg.pq.version()}"
    + (f", prepare_threshold={THRESHOLD}" if THRESHOLD is not None else "")
)
CLIENT = "psycopg3" if THRESHOLD is None else f"psycopg3_t{THRESHOLD}"


def connect(**kwargs):
    # An empty conninfo: libpq takes PGHOST/PGPORT/PGUSER/PGDATABASE, no password.
    return psycopg.connect("", autocommit=True, **OPTIONS, **kwargs)


def simple():
    with connect() as conn:
        # Without parameters psycopg sends a simple Query, so several statements work; never
        # prepared (prepare=False), as PostgreSQL cannot prepare several statements in one and
        # prepare_threshold=0 would otherwise try.
        conn.execute("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)", prepare=False)
        equal(conn.execute("SELECT sum(v) FROM t").fetchone()[0], 3)


def params():
    with connect() as conn:
        # With parameters: Parse/Bind/Execute, values sent separately from the text.
        row = conn.execute("SELECT %s::int + %s, %s::text || '!'", (40, 2, "hi")).fetchone()
        equal(row, (42, "hi!"))


def prepared():
    query = f"SELECT %s::int * 2 /* {compat.tag(CLIENT)} */"
    with connect() as conn:
        # Prepared at the first run; outside a transaction block each run may take another
        # server connection in transaction mode.
        for i in range(6):
            equal(conn.execute(query, (i,), prepare=True).fetchone()[0], i * 2)
        # The last runs and the lookup in one transaction: one server connection.
        with conn.transaction():
            for i in range(2):
                equal(conn.execute(query, (i,), prepare=True).fetchone()[0], i * 2)
            rows = conn.execute(compat.PREPARED_LOOKUP.format("%s"), (compat.tag(CLIENT),)).fetchall()
        return compat.check_prepared(rows, 2)


def commit():
    with connect() as conn:
        conn.execute("CREATE TEMP TABLE t (v int)")
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (1)")
        equal(conn.execute("SELECT count(*) FROM t").fetchone()[0], 1)
        equal(conn.info.transaction_status, psycopg.pq.TransactionStatus.IDLE, "status after commit")


def rollback():
    with connect() as conn:
        conn.execute("CREATE TEMP TABLE t (v int)")
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (1)")
            raise psycopg.Rollback()  # leaves the block by rolling back, without an error
        equal(conn.execute("SELECT count(*) FROM t").fetchone()[0], 0)


def error_recovery():
    with connect() as conn:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT 1 / 0")
            raise AssertionError("1/0 did not fail")
        except errors.DivisionByZero as e:
            equal(e.sqlstate, "22012", "sqlstate")
        # The failed transaction refuses further statements until it is rolled back.
        try:
            conn.execute("SELECT 1")
            raise AssertionError("a statement in the failed transaction succeeded")
        except errors.InFailedSqlTransaction as e:
            equal(e.sqlstate, "25P02", "sqlstate")
        conn.execute("ROLLBACK")
        equal(conn.execute("SELECT 'recovered'").fetchone()[0], "recovered")


def copy_in():
    with connect() as conn:
        conn.execute("CREATE TEMP TABLE c (id int, name text, data bytea)")
        with conn.cursor().copy("COPY c FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"{UNICODE} {i}", BYTES))
        row = conn.execute("SELECT count(*), sum(id), max(name), bool_and(data = %s) FROM c", (BYTES,)).fetchone()
        equal(row, (1000, 499500, f"{UNICODE} 999", True))


def copy_out():
    with connect() as conn:
        with conn.cursor().copy("COPY (SELECT g, 'ü' || g FROM generate_series(1, 10000) g) TO STDOUT") as copy:
            rows = list(copy.rows())
        equal(len(rows), 10000, "rows")
        equal(rows[-1], ("10000", "ü10000"))


def listen_notify():
    channel = compat.channel(CLIENT)
    with compat.exclusive(), connect() as listener, connect() as sender:
        listener.execute(f"LISTEN {channel}")
        # The NOTIFY and pg_backend_pid() in one statement: the pid of the server process
        # that sent it, in transaction mode too.
        pid = sender.execute("SELECT pg_backend_pid() FROM pg_notify(%s, %s)", (channel, UNICODE)).fetchone()[0]
        notes = list(listener.notifies(timeout=5, stop_after=1))
        ensure(notes, "no notification within 5s")
        equal((notes[0].channel, notes[0].payload), (channel, UNICODE))
        equal(notes[0].pid, pid, "sender pid")
        if not compat.TRANSACTION:
            # The pid the sender learnt at login (BackendKeyData) is that server process too.
            # (In transaction mode BackendKeyData carries the proxy's key.)
            equal(notes[0].pid, sender.info.backend_pid, "sender pid from BackendKeyData")


def cancel():
    with connect() as conn:
        threading.Timer(compat.CANCEL_AFTER, conn.cancel_safe).start()
        started = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
            raise AssertionError("pg_sleep(30) was not cancelled")
        except errors.QueryCanceled as e:
            equal(e.sqlstate, "57014", "sqlstate")
        took = time.monotonic() - started
        ensure(took < compat.CANCEL_LIMIT, f"cancel took {took:.1f}s")
        equal(conn.execute("SELECT 1").fetchone()[0], 1, "after the cancel")
        return f"cancelled after {took:.1f}s"


def bytea():
    with connect() as conn:
        # Text and binary result formats decode bytea differently: check both.
        equal(conn.execute("SELECT %s::bytea", (BYTES,)).fetchone()[0], BYTES, "text format")
        equal(conn.cursor(binary=True).execute("SELECT %b", (BYTES,)).fetchone()[0], BYTES, "binary format")


def unicode():
    with connect() as conn:
        equal(conn.info.encoding, "utf-8", "client encoding")
        row = conn.execute(f"SELECT %s::text, char_length(%s::text), '{UNICODE}'", (UNICODE, UNICODE)).fetchone()
        equal(row, (UNICODE, UNICODE_CHARS, UNICODE))


def large_result():
    with connect() as conn:
        rows = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, %s) g", (LARGE_ROWS,)).fetchall()
        equal((len(rows), rows[-1][0]), (LARGE_ROWS, LARGE_ROWS), "rows")
        equal(len(conn.execute("SELECT repeat('x', %s)", (LARGE_VALUE,)).fetchone()[0]), LARGE_VALUE, "value out")
        big = bytes(LARGE_VALUE)
        equal(conn.execute("SELECT length(%s::bytea)", (big,)).fetchone()[0], LARGE_VALUE, "value in")


def concurrent():
    # psycopg_pool hands out connections to 8 threads; 4 sessions at most.
    pids, failures = [], []

    def work(pool):
        try:
            with pool.connection(timeout=10) as conn:
                server = conn.execute("SELECT pg_backend_pid() FROM pg_sleep(0.2)").fetchone()[0]
                pids.append((conn.info.backend_pid, server))
        except Exception as e:
            failures.append(e)

    kwargs = {"autocommit": True, **OPTIONS}
    with psycopg_pool.ConnectionPool("", min_size=2, max_size=4, kwargs=kwargs) as pool:
        pool.wait(timeout=10)  # fail fast if the pool cannot log in at all
        threads = [threading.Thread(target=work, args=(pool,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ensure(not failures, f"pool queries failed: {failures}")
    return f"psycopg_pool, {compat.check_sessions(pids, 8)}"


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
