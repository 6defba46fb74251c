"""asyncpg through lakebase-proxy (run by tests/compat.rs).

asyncpg implements the protocol itself (no libpq), uses binary formats and caches named
prepared statements by default, so it exercises different paths from the libpq drivers.
COMPAT_MODE and COMPAT_LOCK: see compat.py."""

import asyncio
import time

import compat
from compat import BYTES, LARGE_ROWS, LARGE_VALUE, UNICODE, UNICODE_CHARS, equal, ensure

asyncpg = compat.require("asyncpg")
compat.version(f"asyncpg {asyncpg.__version__}")


def connect():
    # asyncpg reads PGHOST/PGPORT/PGUSER/PGDATABASE like libpq; no password.
    return asyncpg.connect()


async def simple():
    conn = await connect()
    try:
        # execute() without arguments sends a simple Query: several statements in one.
        await conn.execute("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        equal(await conn.fetchval("SELECT sum(v) FROM t"), 3)
    finally:
        await conn.close()


async def params():
    conn = await connect()
    try:
        row = await conn.fetchrow("SELECT $1::int + $2::int, $3::text || '!'", 40, 2, "hi")
        equal(tuple(row), (42, "hi!"))
    finally:
        await conn.close()


async def prepared():
    conn = await connect()
    try:
        statement = await conn.prepare(f"SELECT $1::int * 2 /* {compat.tag('asyncpg')} */")
        # Outside a transaction block each run may take another server connection in
        # transaction mode.
        for i in range(6):
            equal(await statement.fetchval(i), i * 2)
        # The last runs and the lookup in one transaction: one server connection.
        async with conn.transaction():
            for i in range(2):
                equal(await statement.fetchval(i), i * 2)
            rows = await conn.fetch(compat.PREPARED_LOOKUP.format("$1"), compat.tag("asyncpg"))
        return compat.check_prepared([tuple(r) for r in rows], 2)
    finally:
        await conn.close()


async def commit():
    conn = await connect()
    try:
        await conn.execute("CREATE TEMP TABLE t (v int)")
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (1)")
        equal(await conn.fetchval("SELECT count(*) FROM t"), 1)
    finally:
        await conn.close()


class Undo(Exception):
    pass


async def rollback():
    conn = await connect()
    try:
        await conn.execute("CREATE TEMP TABLE t (v int)")
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
                raise Undo()  # an exception leaving the block rolls the transaction back
        except Undo:
            pass
        equal(await conn.fetchval("SELECT count(*) FROM t"), 0)
    finally:
        await conn.close()


async def error_recovery():
    conn = await connect()
    try:
        await conn.execute("BEGIN")
        try:
            await conn.fetchval("SELECT 1 / 0")
            raise AssertionError("1/0 did not fail")
        except asyncpg.DivisionByZeroError as e:
            equal(e.sqlstate, "22012", "sqlstate")
        try:
            await conn.fetchval("SELECT 1")
            raise AssertionError("a statement in the failed transaction succeeded")
        except asyncpg.InFailedSQLTransactionError as e:
            equal(e.sqlstate, "25P02", "sqlstate")
        await conn.execute("ROLLBACK")
        equal(await conn.fetchval("SELECT 'recovered'"), "recovered")
    finally:
        await conn.close()


async def copy_in():
    conn = await connect()
    try:
        await conn.execute("CREATE TEMP TABLE c (id int, name text, data bytea)")
        # asyncpg sends records in COPY's binary format.
        records = [(i, f"{UNICODE} {i}", BYTES) for i in range(1000)]
        await conn.copy_records_to_table("c", records=records)
        row = await conn.fetchrow("SELECT count(*), sum(id), max(name), bool_and(data = $1) FROM c", BYTES)
        equal(tuple(row), (1000, 499500, f"{UNICODE} 999", True))
        return "binary COPY (copy_records_to_table)"
    finally:
        await conn.close()


async def copy_out():
    conn = await connect()
    try:
        chunks = []

        async def sink(chunk):
            chunks.append(chunk)

        await conn.copy_from_query("SELECT g, 'ü' || g FROM generate_series(1, 10000) g", output=sink)
        lines = b"".join(chunks).decode().splitlines()
        equal((len(lines), lines[-1]), (10000, "10000\tü10000"))
    finally:
        await conn.close()


async def listen_notify():
    channel = compat.channel("asyncpg")
    with compat.exclusive():
        listener, sender = await connect(), await connect()
        try:
            received = asyncio.get_running_loop().create_future()
            await listener.add_listener(
                channel, lambda _conn, pid, chan, payload: received.set_result((pid, chan, payload))
            )
            # The NOTIFY and pg_backend_pid() in one statement: the pid of the server process
            # that sent it, in transaction mode too.
            sent_by = await sender.fetchval("SELECT pg_backend_pid() FROM pg_notify($1, $2)", channel, UNICODE)
            pid, chan, payload = await asyncio.wait_for(received, 5)
            equal((chan, payload), (channel, UNICODE))
            equal(pid, sent_by, "sender pid")
            if not compat.TRANSACTION:
                # BackendKeyData names the same server process (in transaction mode it
                # carries the proxy's key).
                equal(pid, sender.get_server_pid(), "sender pid from BackendKeyData")
        finally:
            await listener.close()
            await sender.close()


async def cancel():
    conn = await connect()
    try:
        pid = conn.get_server_pid()
        tag = compat.tag("asyncpg")
        started = time.monotonic()
        # asyncpg's cancel: on a timeout it sends a CancelRequest and reports TimeoutError,
        # consuming the server's 57014 itself. The connection is only usable again once the
        # server has answered, so a quick next query proves the cancel reached pg_sleep.
        try:
            await conn.execute(f"SELECT pg_sleep(30) /* {tag} */", timeout=compat.CANCEL_AFTER)
            raise AssertionError("pg_sleep(30) was not cancelled")
        except asyncio.TimeoutError:
            pass
        if compat.TRANSACTION:
            # The next statement may run on another server connection, and the pid asyncpg
            # holds is the proxy's key: instead of "the same backend answers again", no
            # server process runs the pg_sleep any more.
            running = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND strpos(query, $1) > 0",
                tag,
                timeout=compat.CANCEL_LIMIT,
            )
            equal(running, 0, "pg_sleep(30) still running")
        else:
            equal(await conn.fetchval("SELECT pg_backend_pid()", timeout=compat.CANCEL_LIMIT), pid, "same backend")
        took = time.monotonic() - started
        ensure(took < compat.CANCEL_LIMIT, f"cancel took {took:.1f}s")
        after = "no server process runs it any more" if compat.TRANSACTION else "the same backend answers"
        return f"via timeout=; 57014 consumed by asyncpg; {after}, usable again after {took:.1f}s"
    finally:
        await conn.close()


async def bytea():
    conn = await connect()
    try:
        # asyncpg sends and receives bytea in the binary format.
        equal(await conn.fetchval("SELECT $1::bytea", BYTES), BYTES)
    finally:
        await conn.close()


async def unicode():
    conn = await connect()
    try:
        equal(conn.get_settings().client_encoding, "UTF8", "client encoding")
        row = await conn.fetchrow(f"SELECT $1::text, char_length($1::text), '{UNICODE}'", UNICODE)
        equal(tuple(row), (UNICODE, UNICODE_CHARS, UNICODE))
    finally:
        await conn.close()


async def large_result():
    conn = await connect()
    try:
        rows = await conn.fetch("SELECT g, repeat('x', 100) FROM generate_series(1, $1::int) g", LARGE_ROWS)
        equal((len(rows), rows[-1][0]), (LARGE_ROWS, LARGE_ROWS), "rows")
        equal(len(await conn.fetchval("SELECT repeat('x', $1)", LARGE_VALUE)), LARGE_VALUE, "value out")
        equal(await conn.fetchval("SELECT length($1::bytea)", bytes(LARGE_VALUE)), LARGE_VALUE, "value in")
    finally:
        await conn.close()


async def concurrent():
    async def work(pool):
        async with pool.acquire() as conn:
            return conn.get_server_pid(), await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.2)")

    async with asyncpg.create_pool(min_size=2, max_size=4) as pool:
        pids = await asyncio.gather(*[work(pool) for _ in range(8)])
    return f"create_pool, {compat.check_sessions(pids, 8)}"


def sync(check):
    """compat.run calls plain functions: run each coroutine in a fresh loop, with a time limit."""
    return lambda: asyncio.run(asyncio.wait_for(check(), 30))


compat.run(
    [
        ("simple", sync(simple)),
        ("params", sync(params)),
        ("prepared", sync(prepared)),
        ("commit", sync(commit)),
        ("rollback", sync(rollback)),
        ("error_recovery", sync(error_recovery)),
        ("copy_in", sync(copy_in)),
        ("copy_out", sync(copy_out)),
        ("listen_notify", sync(listen_notify)),
        ("cancel", sync(cancel)),
        ("bytea", sync(bytea)),
        ("unicode", sync(unicode)),
        ("large_result", sync(large_result)),
        ("concurrent", sync(concurrent)),
    ]
)
