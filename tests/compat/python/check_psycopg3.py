"""psycopg 3 and psycopg_pool through lakebase-proxy (run by tests/compat.rs)."""

import threading
import time

import compat
from compat import BYTES, LARGE_ROWS, LARGE_VALUE, UNICODE, UNICODE_CHARS, equal, ensure

psycopg = compat.require("psycopg")
psycopg_pool = compat.require("psycopg_pool")
errors = psycopg.errors
compat.version(f"psycopg {psycopg.__version__}, psycopg_pool {psycopg_pool.__version__}, libpq {psycopg.pq.version()}")


def connect(**kwargs):
    # An empty conninfo: libpq takes PGHOST/PGPORT/PGUSER/PGDATABASE, no password.
    return psycopg.connect("", autocommit=True, **kwargs)


def simple():
    with connect() as conn:
        # Without parameters psycopg sends a simple Query, so several statements work.
        conn.execute("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        equal(conn.execute("SELECT sum(v) FROM t").fetchone()[0], 3)


def params():
    with connect() as conn:
        # With parameters: Parse/Bind/Execute, values sent separately from the text.
        row = conn.execute("SELECT %s::int + %s, %s::text || '!'", (40, 2, "hi")).fetchone()
        equal(row, (42, "hi!"))


def prepared():
    with connect() as conn:
        for i in range(3):
            equal(conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone()[0], i * 2)
        # A named server-side statement exists only if the Parse really reached this backend.
        count = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        ensure(count >= 1, "no server-side prepared statement after prepare=True")


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
    channel = compat.channel("psycopg3")
    with connect() as listener, connect() as sender:
        listener.execute(f"LISTEN {channel}")
        sender.execute("SELECT pg_notify(%s, %s)", (channel, UNICODE))
        notes = list(listener.notifies(timeout=5, stop_after=1))
        ensure(notes, "no notification within 5s")
        equal((notes[0].channel, notes[0].payload), (channel, UNICODE))
        # The pid the sender learnt at login (BackendKeyData) is the one the server reports.
        equal(notes[0].pid, sender.info.backend_pid, "sender pid")


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
                pids.append(conn.execute("SELECT pg_backend_pid() FROM pg_sleep(0.2)").fetchone()[0])
        except Exception as e:
            failures.append(e)

    with psycopg_pool.ConnectionPool("", min_size=2, max_size=4, kwargs={"autocommit": True}) as pool:
        pool.wait(timeout=10)  # fail fast if the pool cannot log in at all
        threads = [threading.Thread(target=work, args=(pool,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ensure(not failures, f"pool queries failed: {failures}")
    equal(len(pids), 8, "queries answered")
    ensure(len(set(pids)) >= 2, f"only {len(set(pids))} backend(s) used")
    return f"psycopg_pool, {len(set(pids))} sessions"


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
